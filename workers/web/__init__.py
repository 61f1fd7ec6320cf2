"""The demo web tier (`farm web`): what a real web tier does with the farm, in a small ASGI app.

It uses only the farm's documented surface: the enqueue API (tasks/enqueue.py), the blob store
for originals, the graph writes and feed reads of the feed contract (FeedStore.follow, unfollow,
feed_page) and photo records. Nothing here is imported by the farm itself.
"""
