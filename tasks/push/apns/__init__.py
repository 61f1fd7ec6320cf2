"""APNs: the apps we push for, the farm-wide provider token, and the one HTTP/2 adapter.

    from tasks.push.apns import client, token
    from tasks.push.apns.apps import get_app

    app = get_app("com.example.photos")
    results = client.send_many(app, [client.PushRequest(device_token, payload)])
    for batch in client.as_completed(app, requests):  # answers as they arrive
        ...
"""
