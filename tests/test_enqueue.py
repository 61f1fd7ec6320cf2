"""The web tier's enqueue API: validation before anything is sent, then a real publish."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.messages import ArgumentError, check_small_json
from tasks import enqueue


def queued(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Messages waiting in a queue, decoded (kombu's Redis layout: a list per queue)."""
    out = []
    for raw in broker.lrange(queue, 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"task": msg["headers"]["task"], "id": msg["headers"]["id"],
                    "args": body[0], "kwargs": body[1],
                    "content_type": msg["content-type"]})
    return out


def test_photo_uploaded_sends_by_name_to_the_photos_queue(
        data: redis.Redis, broker: redis.Redis) -> None:
    task_id = enqueue.photo_uploaded(17, 42, "originals/17.jpg", caption="hi",
                                     share_to=["twitter", "facebook", "twitter"])
    [msg] = queued(broker, "photos")
    assert msg == {"task": "photos.process", "id": task_id, "args": [],
                   "content_type": "application/json",
                   "kwargs": {"photo_id": 17, "owner_id": 42, "original_key": "originals/17.jpg",
                              "caption": "hi", "share_to": ["twitter", "facebook"]}}


def test_each_enqueue_function_reaches_its_queue(data: redis.Redis, broker: redis.Redis) -> None:
    enqueue.user_followed(1, 2)
    enqueue.user_unfollowed(1, 2)
    enqueue.photo_deleted(5, 2)
    enqueue.notify_users([3, 4, 3], "you have a like", badge=2, data={"photo": 5})
    assert [m["task"] for m in queued(broker, "feeds")] == ["feeds.unfollow", "feeds.follow"]
    assert [m["task"] for m in queued(broker, "feeds_batch")] == ["feeds.photo_deleted"]
    [push] = queued(broker, "push")
    assert push["kwargs"]["user_ids"] == [3, 4]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: enqueue.photo_uploaded("17", 42, "k"), "photo_id: must be an integer"),
    (lambda: enqueue.photo_uploaded(True, 42, "k"), "photo_id: must be an integer"),
    (lambda: enqueue.photo_uploaded(0, 42, "k"), f"photo_id: must be between 1 and {2**63 - 1}"),
    (lambda: enqueue.photo_uploaded(2**63, 42, "k"), "photo_id: must be between"),
    (lambda: enqueue.photo_uploaded(1, 42, ""), "original_key: must not be empty"),
    (lambda: enqueue.photo_uploaded(1, 42, "../etc/passwd"), "original_key: must not contain"),
    (lambda: enqueue.photo_uploaded(1, 42, "a//b"), "original_key: must not contain"),
    (lambda: enqueue.photo_uploaded(1, 42, "/abs"), "original_key: must be a relative key"),
    (lambda: enqueue.photo_uploaded(1, 42, "k", caption="x" * 2201), "caption: is 2201"),
    (lambda: enqueue.photo_uploaded(1, 42, "k", share_to=["myspace"]), "unknown network"),
    (lambda: enqueue.photo_uploaded(1, 42, "k", share_to="twitter"), "not a string"),
    (lambda: enqueue.user_followed(3, 3), "cannot follow themselves"),
    (lambda: enqueue.user_unfollowed(3, -1), "followee_id: must be between"),
    (lambda: enqueue.notify_users([], "hi"), "user_ids: must not be empty"),
    (lambda: enqueue.notify_users(range(1, 102), "hi"), "over 100 per message"),
    (lambda: enqueue.notify_users([1], ""), "alert: must not be empty"),
    (lambda: enqueue.notify_users([1], "hi", badge=-1), "badge: must be between 0 and"),
    (lambda: enqueue.notify_users([1], "hi", data={"x": object()}), "data: must be plain JSON"),
    (lambda: enqueue.notify_users([1], "hi", data={"x": "y" * 2000}), "over 1024"),
])
def test_bad_arguments_are_refused_before_sending(
        call: Any, message: str, data: redis.Redis, broker: redis.Redis) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        call()
    assert not any(broker.llen(q) for q in ("photos", "feeds", "feeds_batch", "push"))


def test_published_arguments_must_be_small_json(data: redis.Redis, broker: redis.Redis) -> None:
    # The test session publishes with FARM_STRICT_ARGS on: anything bypassing the API is checked.
    with pytest.raises(ArgumentError, match="over the 4096-byte limit"):
        app.send_task("photos.reprocess", args=["x" * 5000])
    with pytest.raises(ArgumentError, match="not plain JSON"):
        check_small_json("t", [b"bytes"], {}, 4096)
    assert broker.llen("photos_batch") == 0


def test_enqueue_imports_no_worker_side_code() -> None:
    code = ("import sys, tasks.enqueue; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PIL', 'boto3', 'botocore', 'tweepy', 'facebook') or m == 'tasks.core.base']; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
