"""The fan-out scenario's graph and its end-state check: for each post, the owner's feed and every
follower's feed hold it exactly once, and no feed holds anything else.

Imported only once the mode's FARM_* variables are set (it uses the farm's settings).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from tasks.feeds.store import FeedStore

ACTIVE_SHARE, SEEN_LONG_AGO_SHARE = 0.4, 0.3  # of users; the rest were never seen


@dataclass
class Graph:
    users: int
    followers: dict[int, list[int]]  # owner -> follower ids

    @property
    def edges(self) -> int:
        return sum(map(len, self.followers.values()))


def make_graph(rng: random.Random, users: int, owners: int, edges: int) -> Graph:
    """Owners 1..owners, each followed by random users of 1..users; popularity skewed (the first
    owner has several times the followers of the last), exactly ``edges`` follow edges."""
    weights = [1 / (i + 1) ** 0.6 for i in range(owners)]
    ids = list(range(1, owners + 1))
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < edges:
        for owner in rng.choices(ids, weights, k=edges - len(pairs)):
            follower = rng.randint(1, users)
            if follower != owner:
                pairs.add((follower, owner))
    followers: dict[int, list[int]] = {o: [] for o in ids}
    for follower, owner in sorted(pairs):
        followers[owner].append(follower)
    return Graph(users, followers)


def write_graph(store: FeedStore, graph: Graph, rng: random.Random) -> None:
    """The graph as the web tier writes it (followers and following sets), and who was active:
    a share seen in the last three days (their chunks go to the feeds queue first), a share seen
    a month ago, the rest never (both on feeds_batch)."""
    pipe = store.graph.pipeline(transaction=False)
    for owner, members in graph.followers.items():
        for start in range(0, len(members), 5000):
            part = members[start:start + 5000]
            pipe.zadd(store.followers_key(owner), {str(u): u for u in part})
        for u in members:
            pipe.zadd(store.following_key(u), {str(owner): owner})
        pipe.execute()
    now, seen = time.time(), {}
    for uid in range(1, graph.users + 1):
        draw = rng.random()
        if draw < ACTIVE_SHARE:
            seen[str(uid)] = now - rng.uniform(0, 3 * 86400)
        elif draw < ACTIVE_SHARE + SEEN_LONG_AGO_SHARE:
            seen[str(uid)] = now - 30 * 86400
    if seen:
        store.graph.zadd(store.last_active, seen)


@dataclass
class FeedCheck:
    posts: int = 0
    expected: int = 0  # entries: per post, the owner and each follower
    missing: int = 0
    duplicated: int = 0  # entries beyond the first of a photo in one feed
    extra: int = 0  # photos in a feed that should not hold them
    posts_lists_wrong: int = 0  # owners' own posts lists (kept by fan-out) not exactly the posts
    examples: list[str] = field(default_factory=list)


def read_feeds(store: FeedStore, uids: list[int]) -> dict[int, list[str]]:
    """Every user's whole feed, straight off the shard that holds it."""
    out: dict[int, list[str]] = {}
    for index, members in store.by_shard(uids).items():
        for start in range(0, len(members), 2000):
            part = members[start:start + 2000]
            pipe = store.shards[index].pipeline(transaction=False)
            for uid in part:
                pipe.lrange(store.feed_key(uid), 0, -1)
            out.update(zip(part, pipe.execute(), strict=True))
    return out


def check_feeds(store: FeedStore, graph: Graph, posts: list[tuple[int, int]]) -> FeedCheck:
    """Compare every feed (all users, followers or not) with what the posts should have put in
    it, as sets and as counts."""
    want: dict[int, set[str]] = {}
    for photo, owner in posts:
        for uid in (owner, *graph.followers.get(owner, ())):
            want.setdefault(uid, set()).add(str(photo))
    out = FeedCheck(posts=len(posts), expected=sum(map(len, want.values())))
    feeds = read_feeds(store, list(range(1, graph.users + 1)))
    for uid, feed in feeds.items():
        got, expected = Counter(feed), want.get(uid, set())
        missing = expected - got.keys()
        extra = got.keys() - expected
        dups = sum(n - 1 for n in got.values() if n > 1)
        out.missing += len(missing)
        out.extra += len(extra)
        out.duplicated += dups
        if (missing or extra or dups) and len(out.examples) < 8:
            out.examples.append(f"user {uid}: missing {sorted(missing)[:3]}, extra "
                                f"{sorted(extra)[:3]}, duplicated "
                                f"{[p for p, n in got.items() if n > 1][:3]}")
    by_owner: dict[int, list[str]] = {}
    for photo, owner in posts:
        by_owner.setdefault(owner, []).append(str(photo))
    pipe = store.graph.pipeline(transaction=False)
    owners = sorted(by_owner)
    for owner in owners:
        pipe.lrange(store.posts_key(owner), 0, -1)
    for owner, listed in zip(owners, pipe.execute(), strict=True):
        if Counter(listed) != Counter(by_owner[owner]):
            out.posts_lists_wrong += 1
            if len(out.examples) < 8:
                out.examples.append(f"owner {owner}: posts list holds {len(listed)} "
                                    f"({len(set(listed))} distinct), posted "
                                    f"{len(by_owner[owner])}")
    return out
