"""The demo web tier as a Starlette app: upload, watch the variants, follow, read feeds, push.

It does exactly what a real web tier does and nothing more: the original goes into the blob
store under a key, then ``enqueue.photo_uploaded`` (ids and keys only); follows write the graph
(``FeedStore.follow``/``unfollow``) before ``enqueue.user_followed``/``user_unfollowed``, as
the feed contract asks; a push is ``enqueue.notify_users``; pages read ``feed_page`` and photo
records. Arguments are checked with
the enqueue API's own check (``enqueue.message``) before anything is stored, so a refused
upload leaves nothing behind. Handlers doing Redis or storage I/O are plain functions (Starlette
runs them in its thread pool); the form parsing ones hand that part to the pool themselves.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from config.settings import Settings, get_settings
from tasks import enqueue
from tasks.blobs import BlobNotFound, open_store
from tasks.core.ids import MAX_SHARD, IdGenerator
from tasks.core.metrics import counters
from tasks.core.redis import data_redis
from tasks.feeds.store import feed_store
from tasks.photos.records import PhotoRecords
from workers.web import pages
from workers.web.guard import FORM_OVERHEAD, BodyLimit, CsrfCookie, check_post

if TYPE_CHECKING:
    from workers.demo_apns import ApnsStandIn
    from workers.demo_social import SocialStandIn
    from workers.demo_webhooks import WebhookReceiver

RECENT_UPLOADS = 50  # shown on the front page: this web tier's own memory of what it took
PUSHES_SHOWN = 100  # the APNs stand-in's newest pushes on /standins
FEED_PAGE = 30
# Only variants are served: the original (whatever a user sent) never is.
VARIANT_KEY = re.compile(r"photos/[1-9][0-9]{0,18}/[A-Za-z0-9_-]{1,32}\.jpg")
# An original is stored with its type only when it is one of these (the worker reads the bytes
# themselves; a client's free-form Content-Type never reaches a storage header).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/avif",
                         "image/heic", "image/heif"})
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


@dataclass
class StandIns:
    """The local stand-ins the demo runs, shown on /standins when attached."""

    social: SocialStandIn | None = None
    hooks: WebhookReceiver | None = None
    apns: ApnsStandIn | None = None


class WebTier:
    def __init__(self, s: Settings, standins: StandIns | None) -> None:
        self.s = s
        self.standins = standins
        self.ids = IdGenerator(secrets.randbelow(MAX_SHARD + 1))
        self.uploads: deque[tuple[int, int]] = deque(maxlen=RECENT_UPLOADS)
        self.lock = threading.Lock()

    # -- pages --------------------------------------------------------------------------

    def home(self, request: Request) -> HTMLResponse:
        with self.lock:
            recent = list(self.uploads)
        return HTMLResponse(pages.home(request.state.csrf, recent))

    def photo_page(self, request: Request) -> HTMLResponse:
        photo_id = path_id(request, "photo_id", enqueue.MAX_PHOTO_ID)
        return HTMLResponse(pages.photo(photo_id))

    def user_page(self, request: Request) -> HTMLResponse:
        uid = path_id(request, "user_id", enqueue.MAX_USER_ID)
        feeds = feed_store(self.s)
        # Opening one's feed is being active: fan-out serves recently active users first.
        feeds.touch(uid)
        ids = cast("list[str]", feeds.graph.zrange(feeds.following_key(uid), 0, 99))
        following = [int(u) for u in ids]
        return HTMLResponse(pages.user(uid, request.state.csrf, following))

    def open_feed(self, request: Request) -> Response:
        """The home page's "read a feed" form (a GET: it changes nothing)."""
        uid = as_int(request.query_params.get("user_id", ""))
        if not isinstance(uid, int) or not 1 <= uid <= enqueue.MAX_USER_ID:
            return self.refused(request, "user_id: a user id from 1 to 2**53-1", 400)
        return RedirectResponse(f"/users/{uid}", 303)

    def standins_page(self, request: Request) -> HTMLResponse:
        social = self.standins.social if self.standins else None
        hooks = self.standins.hooks if self.standins else None
        tweets = [(t.user, t.text) for t in social.tweets()] if social else []
        photos = [(p.page_id, p.message, p.size) for p in social.page_photos()] if social else []
        received = [(h.path, h.webhook_id, h.verified) for h in hooks.received()] if hooks else []
        apns = self.standins.apns if self.standins else None
        sent = [(f"{p.token[:8]}...{p.token[-4:]}", p.alert,
                 time.strftime("%H:%M:%S", time.localtime(p.at)),
                 "200" if p.ok else f"{p.status} {p.reason}")
                for p in reversed(apns.received()[-PUSHES_SHOWN:])] if apns else []
        counted = {k: v for k, v in counters(data_redis(), self.s).items()
                   if k.startswith("push.")}
        return HTMLResponse(pages.standins(tweets, photos, received, sent, counted,
                                           attached=self.standins is not None))

    # -- reads (JSON for the pages' polling) --------------------------------------------

    def photo_json(self, request: Request) -> JSONResponse:
        photo_id = path_id(request, "photo_id", enqueue.MAX_PHOTO_ID)
        rec = PhotoRecords(data_redis(), self.s).get(photo_id)
        if rec is None:
            return JSONResponse({"photo_id": str(photo_id), "status": "unknown"}, 404)
        variants = [{"name": name, "width": v["width"], "height": v["height"],
                     "bytes": v["bytes"], "src": f"/blobs/{v['key']}?v={rec.version}"}
                    for name, v in sorted(rec.variants.items(), key=lambda kv: -kv[1]["width"])]
        return JSONResponse({"photo_id": str(photo_id), "status": rec.status,
                             "reason": rec.reason, "owner_id": rec.owner_id,
                             "variants": variants})

    def feed_json(self, request: Request) -> JSONResponse:
        uid = path_id(request, "user_id", enqueue.MAX_USER_ID)
        records = PhotoRecords(data_redis(), self.s)
        items: list[dict[str, Any]] = []
        for photo_id in feed_store(self.s).feed_page(uid, FEED_PAGE):
            rec = records.get(photo_id)
            thumb = rec.variants.get("sq150") if rec and rec.status == "ready" else None
            # Ids as strings: 64-bit photo ids are past what a JS number holds exactly.
            items.append({"photo_id": str(photo_id), "owner_id": rec.owner_id if rec else None,
                          "thumb": f"/blobs/{thumb['key']}?v={rec.version}"
                          if thumb and rec else None})
        return JSONResponse({"user_id": uid, "feed": items})

    def blob(self, request: Request) -> Response:
        key = request.path_params["key"]
        if not VARIANT_KEY.fullmatch(key):
            raise HTTPException(404)
        try:
            data = open_store(self.s).get(key)
        except BlobNotFound:
            raise HTTPException(404) from None
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": self.s.cache_control})

    # -- writes -------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        async with request.form(max_files=1, max_fields=10) as form:
            check_post(request, form)
            file = form.get("photo")
            if not isinstance(file, UploadFile) or not file.filename:
                return self.refused(request, "choose a photo to upload", 400)
            limit = self.s.max_upload_mb * 1024 * 1024
            data = await file.read(limit + 1)
            if not data:
                return self.refused(request, "the file is empty", 400)
            if len(data) > limit:
                return self.refused(request, f"the file is over {self.s.max_upload_mb} MB "
                                    "(FARM_MAX_UPLOAD_MB)", 413)
            share = [v for v in form.getlist("share_to") if isinstance(v, str)]
            owner, caption = form.get("owner_id"), form.get("caption") or ""
            content_type = (file.content_type if file.content_type in IMAGE_TYPES
                            else "application/octet-stream")
        photo_id = self.ids.next_id()
        key = f"originals/{photo_id}"
        try:
            # The worker's own check, before anything is stored or sent.
            args = enqueue.message("photos.process", photo_id=photo_id, owner_id=as_int(owner),
                                   original_key=key, caption=caption, share_to=share)
        except ValueError as exc:
            return self.refused(request, str(exc), 400)
        await run_in_threadpool(self.store_and_send, args, data, content_type)
        return RedirectResponse(f"/photos/{photo_id}", 303)

    def store_and_send(self, args: dict[str, Any], data: bytes, content_type: str) -> None:
        open_store(self.s).put(args["original_key"], data, content_type=content_type)
        enqueue.photo_uploaded(args["photo_id"], args["owner_id"], args["original_key"],
                               caption=args["caption"], share_to=args["share_to"])
        with self.lock:
            self.uploads.appendleft((args["photo_id"], args["owner_id"]))

    async def follow(self, request: Request) -> Response:
        async with request.form(max_files=0, max_fields=10) as form:
            check_post(request, form)
            action = form.get("action")
            follower, followee = as_int(form.get("follower_id")), as_int(form.get("followee_id"))
        if action not in ("follow", "unfollow"):
            return self.refused(request, "action must be follow or unfollow", 400)
        task = "feeds.follow" if action == "follow" else "feeds.unfollow"
        try:
            args = enqueue.message(task, follower_id=follower, followee_id=followee)
        except ValueError as exc:
            return self.refused(request, str(exc), 400)
        await run_in_threadpool(self.change_graph, action, args["follower_id"],
                                args["followee_id"])
        return RedirectResponse(f"/users/{args['follower_id']}", 303)

    def change_graph(self, action: str, follower: int, followee: int) -> None:
        # The graph first, then the event: the contract fan-out and backfills rely on.
        feeds = feed_store(self.s)
        if action == "follow":
            feeds.follow(follower, followee)
            enqueue.user_followed(follower, followee)
        else:
            feeds.unfollow(follower, followee)
            enqueue.user_unfollowed(follower, followee)

    async def notify(self, request: Request) -> Response:
        """A push to some users' devices: ``enqueue.notify_users``, which checks (the worker's
        own check) before it sends; the stand-ins page then shows what APNs received."""
        async with request.form(max_files=0, max_fields=10) as form:
            check_post(request, form)
            users, alert = form.get("user_ids"), form.get("alert")
        ids = ([as_int(u) for u in re.split(r"[\s,]+", users.strip())]
               if isinstance(users, str) else users)
        try:
            await run_in_threadpool(enqueue.notify_users, cast("list[int]", ids),
                                    alert if isinstance(alert, str) else None)
        except ValueError as exc:
            return self.refused(request, str(exc), 400)
        return RedirectResponse("/standins", 303)

    def refused(self, request: Request, reason: str, status: int) -> HTMLResponse:
        with self.lock:
            recent = list(self.uploads)
        return HTMLResponse(pages.home(request.state.csrf, recent, error=reason), status)


def as_int(value: object) -> object:
    """A form field as the int it spells, else as sent (the enqueue check then names it)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,20}", value.strip()):
        return int(value)
    return value


def path_id(request: Request, name: str, maximum: int) -> int:
    raw = str(request.path_params[name])
    if not re.fullmatch(r"[0-9]{1,20}", raw) or not 1 <= int(raw) <= maximum:
        raise HTTPException(404)
    return int(raw)


def create_app(settings: Settings | None = None, standins: StandIns | None = None) -> Starlette:
    s = settings or get_settings()
    tier = WebTier(s, standins)
    hosts = [*LOOPBACK_HOSTS, s.web_address]
    return Starlette(
        routes=[
            Route("/", tier.home),
            Route("/upload", tier.upload, methods=["POST"]),
            Route("/follow", tier.follow, methods=["POST"]),
            Route("/notify", tier.notify, methods=["POST"]),
            Route("/photos/{photo_id}", tier.photo_page),
            Route("/feed", tier.open_feed),
            Route("/users/{user_id}", tier.user_page),
            Route("/standins", tier.standins_page),
            Route("/api/photos/{photo_id}", tier.photo_json),
            Route("/api/users/{user_id}/feed", tier.feed_json),
            Route("/blobs/{key:path}", tier.blob),
        ],
        middleware=[
            # Another site's name resolved to 127.0.0.1 (DNS rebinding) gets nothing.
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(BodyLimit, limit=s.max_upload_mb * 1024 * 1024 + FORM_OVERHEAD),
            Middleware(CsrfCookie),
        ],
    )
