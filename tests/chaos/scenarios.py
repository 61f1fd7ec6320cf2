"""What each mode does to the farm and what it checks after: fan-out (four ways of dying),
photos end to end. The push mode is in push.py.

Imported once the mode's FARM_* variables are set: the farm's settings and Celery app are read
at import, so a guard before the imports refuses to go on without them.
"""
# ruff: noqa: E402  (the farm's imports come after that guard, on purpose)

from __future__ import annotations

import os
import random
from typing import Any
from urllib.parse import urlsplit

_URLS = [urlsplit(os.environ.get(f"FARM_{name}_URL", "")) for name in ("BROKER", "REDIS")]
if not all(u.hostname == "127.0.0.1" and u.port not in (None, 6379) for u in _URLS):
    # Importing this builds the farm's app from the environment: without the mode's own servers
    # named there first, it would talk to the machine's default Redis (127.0.0.1:6379).
    raise RuntimeError("tests.chaos.scenarios imported before the mode's FARM_* variables were set")

from config.settings import get_settings
from tasks import enqueue
from tasks.blobs import open_store, photo_key
from tasks.core import publish
from tasks.core.ids import IdGenerator
from tasks.core.redis import data_redis
from tasks.feeds.store import FeedStore, feed_store
from tasks.photos.records import READY, PhotoRecords
from tests.chaos.farm import Farm, Sizes, Slot
from tests.chaos.feeds import Graph, check_feeds, make_graph, write_graph


class Scenario:
    """Base: the slots to run, how to strike, what to send, what to check."""

    kinds: tuple[str, ...] = ("parent",)
    broker_crash = False

    def __init__(self, sizes: Sizes, rng: random.Random) -> None:
        self.sizes, self.rng = sizes, rng
        self.ids = IdGenerator(rng.randrange(1, 1000))

    def slots(self) -> list[Slot]:
        raise NotImplementedError

    def setup(self, farm: Farm) -> None:
        pass

    def send(self, n: int) -> None:
        raise NotImplementedError

    def check(self) -> dict[str, Any]:
        raise NotImplementedError


class FanoutScenario(Scenario):
    """The issue's measurement: owners with skewed followings, posts sent the way photos.process
    sends them (feeds.fanout by name), feed and batch workers 2x2."""

    def __init__(self, sizes: Sizes, rng: random.Random) -> None:
        super().__init__(sizes, rng)
        self.graph: Graph = make_graph(rng, sizes.users, sizes.owners, sizes.edges)
        self.posts: list[tuple[int, int]] = []
        self.store: FeedStore | None = None

    def slots(self) -> list[Slot]:
        return [Slot("feed1", "feed", 2), Slot("feed2", "feed", 2),
                Slot("batch1", "batch", 2), Slot("batch2", "batch", 2)]

    def setup(self, farm: Farm) -> None:
        self.store = feed_store()
        write_graph(self.store, self.graph, self.rng)

    def owner(self) -> int:
        return self.rng.randint(1, self.sizes.owners)

    def send(self, n: int) -> None:
        photo, owner = self.ids.next_id(), self.owner()
        self.posts.append((photo, owner))
        publish.send("feeds.fanout", {"photo_id": photo, "owner_id": owner})

    def check(self) -> dict[str, Any]:
        assert self.store is not None
        c = check_feeds(self.store, self.graph, self.posts)
        return {"posts": c.posts, "entries_expected": c.expected, "missing": c.missing,
                "duplicated": c.duplicated, "extra": c.extra,
                "posts_lists_wrong": c.posts_lists_wrong, "examples": c.examples,
                "users": self.graph.users, "edges": self.graph.edges}


class FanoutChildren(FanoutScenario):
    kinds = ("child",)


class FanoutParents(FanoutScenario):
    kinds = ("parent", "parent", "parent", "group")  # a quarter of the blows take the node


class FanoutWarm(FanoutScenario):
    kinds = ("term",)


class FanoutBroker(FanoutScenario):
    kinds = ("parent", "parent", "parent", "group")
    broker_crash = True


class PhotosScenario(FanoutScenario):
    """Uploads end to end: originals in the file:// blob store, enqueue.photo_uploaded (no
    cross-posts), cpu and feed workers struck; batch (inactive followers' chunks) and io
    (webhooks) workers left alone."""

    kinds = ("child", "parent", "group")
    VARIANTS = 8  # distinct originals, reused

    def slots(self) -> list[Slot]:
        return [Slot("cpu1", "cpu", 1), Slot("cpu2", "cpu", 1),
                Slot("feed1", "feed", 2), Slot("feed2", "feed", 2),
                Slot("batch1", "batch", 2, killable=False), Slot("io1", "io", 2, killable=False)]

    def setup(self, farm: Farm) -> None:
        from tests.support.corpus import oriented_jpeg  # phone JPEGs: EXIF orientations 1-8

        super().setup(farm)
        self.originals = [oriented_jpeg(k) for k in range(1, self.VARIANTS + 1)]
        self.blobs = open_store(get_settings())

    def send(self, n: int) -> None:
        photo, owner = self.ids.next_id(), self.owner()
        key = f"originals/{photo}.jpg"
        self.blobs.put(key, self.originals[n % self.VARIANTS], content_type="image/jpeg")
        self.posts.append((photo, owner))
        enqueue.photo_uploaded(photo, owner, key, caption="", share_to=[])

    def check(self) -> dict[str, Any]:
        out = super().check()
        s = get_settings()
        records = PhotoRecords(data_redis(), s)
        names = {"full", *(f"sq{n}" for n in s.photo_squares)}
        bad: list[str] = []
        for photo, owner in self.posts:
            rec = records.get(photo)
            why = ("no record" if rec is None else
                   f"status {rec.status}" if rec.status != READY else
                   f"version {rec.version}" if rec.version != 1 else
                   "follow-ons not sent" if not rec.followons else
                   f"owner {rec.owner_id}" if rec.owner_id != owner else
                   f"variants {sorted(rec.variants)}" if set(rec.variants) != names else "")
            if not why and rec is not None:
                for name in sorted(names):
                    head = self.blobs.head(photo_key(photo, name))
                    if head is None or head.size != rec.variants[name]["bytes"]:
                        why = f"variant {name} not stored as recorded"
                        break
            if why:
                bad.append(f"photo {photo}: {why}")
        out.update(photos=len(self.posts), photos_bad=len(bad),
                   examples=[*out["examples"], *bad[:8]])
        return out
