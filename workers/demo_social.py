"""A local stand-in for X's API v2 and Facebook's Graph API, for the demo and the integration
tests: the two APIs no one can run locally, reached by the real tweepy and facebook-sdk (the
farm's FARM_TWITTER_API_URL and FARM_FACEBOOK_GRAPH_URL point at it: :meth:`SocialStandIn.env`).
Long because both APIs' stand-ins share one server, its auth checks and its record of posts.

One ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a daemon thread::

    with SocialStandIn() as api:
        token, secret = api.add_x_user("anna")
        page_id, page_token = api.add_page("Anna's photos")
        ... api.tweets(), api.page_photos() ...

X (every request OAuth 1.0a-verified: HMAC-SHA1 over RFC 5849's base string, checked with
oauthlib's server-side verification against the consumer secret and the token's secret, with
the timestamp's age and nonce reuse checked too; 401 when anything is off):
- ``POST /2/media/upload`` (multipart ``media``, ``media_category``, ``media_type``), and the
  chunked ``POST /2/media/upload/initialize`` (JSON), ``/{id}/append`` (multipart
  ``segment_index``, ``media``), ``/{id}/finalize``: ``{"data": {"id": ...}}``;
- ``POST /2/tweets`` (JSON ``text``, ``media.media_ids``): 201 ``{"data": {"id", "text"}}``;
  403 "duplicate content" for a text the same user posted within DUPLICATE_WINDOW.
Graph (any ``/vN.M/``):
- ``POST /{page-id}/photos`` (multipart ``source``, ``message``, ``access_token``):
  ``{"id", "post_id"}``; ``GET /{page-id}/photos`` (the Page's uploaded photos, newest first,
  ``limit``): ``{"data": [{"id", "name", "created_time"}]}``;
- code 190 for an unknown or revoked token, 200 for a token of another Page; X-App-Usage and
  X-Page-Usage headers on every answer.
Knobs: :meth:`revoke`, :meth:`throttle_next` (X: 429 with x-rate-limit-reset; Graph: code 32,
or another, with X-Page-Usage's estimated_time_to_regain_access), :meth:`fail_next_html` (502
with an HTML body), :meth:`set_page_usage`, :meth:`hold_page_photo` (a photo already on a Page).

Self-contained (the standard library and oauthlib): tests and the demo import it without the
farm's own code.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from oauthlib.oauth1.rfc5849 import (  # type: ignore[import-untyped]  # no types shipped
    signature as oauth_signature,
)
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

DUPLICATE_WINDOW = 24 * 3600.0  # seconds within which X refuses a user's repeated text
MAX_CLOCK_SKEW = 300  # seconds an OAuth timestamp may be off (X: about 5 minutes)
ONE_SHOT_MAX = 5 * 1024 * 1024  # X's limit for a one-request image upload
GRAPH_PATH = re.compile(r"/(v\d+\.\d+)/(\d+)/photos")
HTML_502 = (b"<html><head><title>502 Bad Gateway</title></head>"
            b"<body><h1>Bad Gateway</h1></body></html>")


@dataclass(frozen=True)
class Tweet:
    id: str
    text: str
    media_ids: list[str]
    user: str  # the handle
    at: float


@dataclass(frozen=True)
class PagePhoto:
    id: str
    post_id: str
    page_id: str
    message: str
    size: int  # bytes of the image
    at: float
    version: str  # the Graph API version in the request's path


@dataclass(frozen=True)
class Seen:
    """One request the stand-in answered."""

    network: str  # "twitter" or "facebook"
    method: str
    path: str  # without the query
    status: int
    at: float


@dataclass
class _Media:
    user: str
    size: int
    media_type: str
    category: str
    chunks: dict[int, int] = field(default_factory=dict)  # segment index -> bytes
    final: bool = False


@dataclass
class _Failures:
    throttle: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"twitter": [], "facebook": []})
    html: list[str | None] = field(default_factory=list)  # network or None (either)


class SocialStandIn:
    """Both APIs on one local port. State is read from any thread (the test's)."""

    def __init__(self, consumer_key: str = "standin-consumer-key",
                 consumer_secret: str = "standin-consumer-secret") -> None:
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self._lock = threading.Lock()
        self._users: dict[str, tuple[str, str]] = {}  # X token -> (secret, handle)
        self._pages: dict[str, tuple[str, str]] = {}  # page token -> (page id, name)
        self._revoked: set[str] = set()
        self._nonces: set[tuple[str, str, str]] = set()  # (consumer, token, nonce)
        self._media: dict[str, _Media] = {}
        self._tweets: list[Tweet] = []
        self._photos: list[PagePhoto] = []
        self._seen: list[Seen] = []
        self._fail = _Failures()
        self._page_usage: dict[str, float] = {"call_count": 1, "total_cputime": 1,
                                              "total_time": 1}
        self._ids = itertools.count(1_900_000_000_000_000_001)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- running -------------------------------------------------------------------------

    def start(self) -> SocialStandIn:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]  # the handler's way back here
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="social-standin",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> SocialStandIn:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        """The FARM_* variables that point the farm's X and Facebook clients here."""
        return {"FARM_TWITTER_API_URL": self.url, "FARM_FACEBOOK_GRAPH_URL": self.url + "/",
                "FARM_TWITTER_CONSUMER_KEY": self.consumer_key,
                "FARM_TWITTER_CONSUMER_SECRET": self.consumer_secret}

    # -- accounts and knobs --------------------------------------------------------------

    def add_x_user(self, handle: str, token: str = "", secret: str = "") -> tuple[str, str]:
        """A user who authorised the app: their access token and secret (made up if not given)."""
        token = token or f"{secrets.randbelow(10**12)}-{secrets.token_urlsafe(30)}"
        secret = secret or secrets.token_urlsafe(32)
        with self._lock:
            self._users[token] = (secret, handle)
        return token, secret

    def add_page(self, name: str, page_id: str = "", token: str = "") -> tuple[str, str]:
        """A Page and a Page access token for it."""
        page_id = page_id or str(100_000_000_000_000 + secrets.randbelow(10**14))
        token = token or "EAA" + secrets.token_urlsafe(120)
        with self._lock:
            self._pages[token] = (page_id, name)
        return page_id, token

    def revoke(self, token: str) -> None:
        """The user revoked the app (X: 401 from now on; Facebook: error 190)."""
        with self._lock:
            self._revoked.add(token)

    def throttle_next(self, network: str, n: int = 1, *, reset_in: float = 60.0,
                      code: int = 32, regain_minutes: int = 5) -> None:
        """The next ``n`` requests to ``network`` are throttled: X answers 429 with
        x-rate-limit-reset ``reset_in`` s ahead; Graph answers error ``code`` with X-Page-Usage
        at 100% and estimated_time_to_regain_access ``regain_minutes``."""
        if network not in ("twitter", "facebook"):
            raise ValueError(f"network: twitter or facebook, got {network!r}")
        with self._lock:
            self._fail.throttle[network] += [{"reset_in": reset_in, "code": code,
                                              "regain": regain_minutes}] * n

    def fail_next_html(self, n: int = 1, network: str | None = None) -> None:
        """The next ``n`` requests (to ``network``, or either) get a 502 with an HTML body, as a
        proxy in front of the API answers when the API is down."""
        with self._lock:
            self._fail.html += [network] * n

    def set_page_usage(self, percent: float, regain_minutes: int = 0) -> None:
        """What X-Page-Usage says from now on (a success near the limit)."""
        with self._lock:
            self._page_usage = {"call_count": percent, "total_cputime": percent / 2,
                                "total_time": percent / 2}
            if regain_minutes:
                self._page_usage["estimated_time_to_regain_access"] = regain_minutes

    def hold_page_photo(self, page_id: str, message: str, size: int = 1000) -> PagePhoto:
        """A photo already on the Page (an earlier attempt's post whose answer was lost)."""
        with self._lock:
            return self._add_photo(page_id, message, size, "v0.0")

    # -- state ---------------------------------------------------------------------------

    def tweets(self, handle: str | None = None) -> list[Tweet]:
        with self._lock:
            return [t for t in self._tweets if handle is None or t.user == handle]

    def page_photos(self, page_id: str | None = None) -> list[PagePhoto]:
        with self._lock:
            return [p for p in self._photos if page_id is None or p.page_id == page_id]

    def requests(self, network: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self._seen if network is None or r.network == network]

    def reset(self) -> None:
        """Forget posts, requests and pending failures (accounts stay)."""
        with self._lock:
            self._tweets.clear()
            self._photos.clear()
            self._seen.clear()
            self._media.clear()
            self._fail = _Failures()

    # -- answering (on the server's threads) ---------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def _add_photo(self, page_id: str, message: str, size: int, version: str) -> PagePhoto:
        photo_id = self._next_id()
        photo = PagePhoto(photo_id, f"{page_id}_{self._next_id()}", page_id, message, size,
                          time.time(), version)
        self._photos.append(photo)
        return photo

    def _failure(self, network: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            for i, which in enumerate(self._fail.html):
                if which in (None, network):
                    del self._fail.html[i]
                    return "html", {}
            if self._fail.throttle[network]:
                return "throttle", self._fail.throttle[network].pop(0)
        return None

    def answer_x(self, req: _Request) -> _Answer:
        failure = self._failure("twitter")
        if failure and failure[0] == "html":
            return _Answer(502, HTML_502, "text/html")
        user = self._x_user(req)
        if user is None:
            return _x_problem(401, "Unauthorized", "Unauthorized")
        if failure:
            reset = int(time.time() + failure[1]["reset_in"])
            return _x_problem(429, "Too Many Requests", "Too Many Requests", headers={
                "x-rate-limit-limit": "100", "x-rate-limit-remaining": "0",
                "x-rate-limit-reset": str(reset)})
        handle = user
        path = req.path
        if req.method == "POST" and path == "/2/media/upload":
            return self._upload_one_shot(handle, req)
        if req.method == "POST" and path == "/2/media/upload/initialize":
            body = req.json()
            try:
                media = _Media(handle, int(body["total_bytes"]), str(body["media_type"]),
                               str(body.get("media_category", "")))
            except (KeyError, TypeError, ValueError):
                return _x_problem(400, "Invalid Request", "total_bytes and media_type needed")
            media_id = self._next_id()
            with self._lock:
                self._media[media_id] = media
            return _x_data(200, {"id": media_id, "media_key": f"3_{media_id}",
                                 "expires_after_secs": 86400})
        m = re.fullmatch(r"/2/media/upload/(\d+)/(append|finalize)", path)
        if req.method == "POST" and m:
            return self._chunk(handle, m.group(1), m.group(2), req)
        if req.method == "POST" and path == "/2/tweets":
            return self._tweet(handle, req)
        return _x_problem(404, "Not Found Error", f"no route {req.method} {path}")

    def _upload_one_shot(self, handle: str, req: _Request) -> _Answer:
        parts = req.multipart()
        media = parts.get("media")
        if media is None or not media:
            return _x_problem(400, "Invalid Request", "media is required")
        if len(media) > ONE_SHOT_MAX:
            return _x_problem(400, "Invalid Request", "media is too large for one request")
        category = parts.get("media_category", b"").decode()
        media_type = parts.get("media_type", b"").decode()
        if category != "tweet_image" or not media_type.startswith("image/"):
            return _x_problem(400, "Invalid Request", "media_category/media_type invalid")
        media_id = self._next_id()
        with self._lock:
            self._media[media_id] = _Media(handle, len(media), media_type, category,
                                           {0: len(media)}, final=True)
        return _x_data(200, {"id": media_id, "media_key": f"3_{media_id}", "size": len(media),
                             "expires_after_secs": 86400,
                             "image": {"image_type": media_type}})

    def _chunk(self, handle: str, media_id: str, step: str, req: _Request) -> _Answer:
        with self._lock:
            media = self._media.get(media_id)
        if media is None or media.user != handle or media.final:
            return _x_problem(400, "Invalid Request", f"media {media_id} is not being uploaded")
        if step == "append":
            parts = req.multipart()
            try:
                index = int(parts["segment_index"].decode())
                chunk = parts["media"]
            except (KeyError, ValueError):
                return _x_problem(400, "Invalid Request", "segment_index and media needed")
            with self._lock:
                media.chunks[index] = len(chunk)
            return _x_data(200, {"expires_at": int(time.time()) + 86400})
        received = sum(media.chunks.values())
        if received != media.size or sorted(media.chunks) != list(range(len(media.chunks))):
            return _x_problem(400, "Invalid Request",
                              f"received {received} of {media.size} bytes")
        with self._lock:
            media.final = True
        return _x_data(200, {"id": media_id, "media_key": f"3_{media_id}", "size": media.size,
                             "expires_after_secs": 86400})

    def _tweet(self, handle: str, req: _Request) -> _Answer:
        body = req.json()
        text = body.get("text") if isinstance(body, dict) else None
        media_ids = ((body.get("media") or {}).get("media_ids") or []) if isinstance(
            body, dict) else []
        if not isinstance(text, str) or not text:
            return _x_problem(400, "Invalid Request", "text is required")
        now = time.time()
        with self._lock:
            for mid in media_ids:
                media = self._media.get(str(mid))
                if media is None or media.user != handle or not media.final:
                    return _x_problem(400, "Invalid Request",
                                      f"media {mid} was not uploaded by this user")
            if any(t.user == handle and t.text == text and now - t.at < DUPLICATE_WINDOW
                   for t in self._tweets):
                return _x_problem(403, "Forbidden", "You are not allowed to create a Tweet "
                                                    "with duplicate content.")
            tweet = Tweet(self._next_id(), text, [str(m) for m in media_ids], handle, now)
            self._tweets.append(tweet)
        return _x_data(201, {"id": tweet.id, "text": text,
                             "edit_history_tweet_ids": [tweet.id]})

    def _x_user(self, req: _Request) -> str | None:
        """The handle of the user the request is signed for, or None (refused)."""
        header = req.headers.get("Authorization", "")
        try:
            oauth = {k: oauth_utils.unescape(v)
                     for k, v in oauth_utils.parse_authorization_header(header)}
        except ValueError:
            return None
        token = oauth.get("oauth_token", "")
        with self._lock:
            user = self._users.get(token)
            revoked = token in self._revoked
        if (user is None or revoked or oauth.get("oauth_consumer_key") != self.consumer_key
                or oauth.get("oauth_signature_method") != "HMAC-SHA1"
                or oauth.get("oauth_version", "1.0") != "1.0"):
            return None
        try:
            age = abs(time.time() - int(oauth.get("oauth_timestamp", "")))
        except ValueError:
            return None
        if age > MAX_CLOCK_SKEW:
            return None
        form = req.body.decode("latin-1") if req.content_type.startswith(
            "application/x-www-form-urlencoded") else None  # RFC 5849 3.4.1.3.1: only that body
        signed = _Signed(
            params=oauth_signature.collect_parameters(
                uri_query=req.query, body=form, headers={"Authorization": header},
                exclude_oauth_signature=True),
            uri=f"http://{req.headers.get('Host', '')}{req.path}",
            http_method=req.method, signature=oauth.get("oauth_signature", ""))
        if not oauth_signature.verify_hmac_sha1(signed, self.consumer_secret, user[0]):
            return None
        nonce = (self.consumer_key, token, oauth.get("oauth_nonce", ""))
        with self._lock:
            if nonce in self._nonces:  # a replayed request
                return None
            self._nonces.add(nonce)
        return user[1]

    def answer_graph(self, req: _Request) -> _Answer:
        failure = self._failure("facebook")
        if failure and failure[0] == "html":
            return _Answer(502, HTML_502, "text/html")
        m = GRAPH_PATH.fullmatch(req.path)
        if m is None:
            return self._graph_error(400, 803, "(#803) Some of the aliases you requested do not "
                                               "exist", "OAuthException")
        version, page_id = m.groups()
        fields = dict(parse_qsl(req.query))
        parts: dict[str, bytes] = {}
        if req.method == "POST":
            parts = req.multipart()
            token = parts.get("access_token", b"").decode()
        else:
            token = fields.get("access_token", "")
        with self._lock:
            page = self._pages.get(token)
            revoked = token in self._revoked
        if page is None or revoked:
            return self._graph_error(400, 190, "Error validating access token: The session has "
                                               "been invalidated because the user changed their "
                                               "password or Facebook has changed the session for "
                                               "security reasons.", "OAuthException", subcode=460)
        if page[0] != page_id:
            return self._graph_error(403, 200, "(#200) Permissions error", "OAuthException")
        if failure:
            usage = {"call_count": 100, "total_cputime": 40, "total_time": 60,
                     "estimated_time_to_regain_access": failure[1]["regain"]}
            code = failure[1]["code"]
            return self._graph_error(400, code, f"({code}) Page request limit reached",
                                     "OAuthException", usage=usage)
        if req.method == "POST":
            image = parts.get("source")
            if not image:
                return self._graph_error(400, 324, "(#324) Requires upload file",
                                         "OAuthException")
            message = parts.get("message", b"").decode("utf-8")
            with self._lock:
                photo = self._add_photo(page_id, message, len(image), version)
            return self._graph_json(200, {"id": photo.id, "post_id": photo.post_id})
        try:
            limit = max(1, min(100, int(fields.get("limit", "25"))))
        except ValueError:
            limit = 25
        with self._lock:
            mine = [p for p in self._photos if p.page_id == page_id][::-1][:limit]
        return self._graph_json(200, {"data": [
            {"id": p.id, "name": p.message, "created_time": time.strftime(
                "%Y-%m-%dT%H:%M:%S+0000", time.gmtime(p.at))} for p in mine],
            "paging": {"cursors": {"before": "b", "after": "a"}}})

    def _usage_headers(self, page_usage: dict[str, Any] | None = None) -> dict[str, str]:
        with self._lock:
            usage = page_usage or dict(self._page_usage)
        return {"x-app-usage": json.dumps({"call_count": 1, "total_cputime": 1,
                                           "total_time": 1}),
                "x-page-usage": json.dumps(usage)}

    def _graph_json(self, status: int, body: dict[str, Any],
                    usage: dict[str, Any] | None = None) -> _Answer:
        return _Answer(status, json.dumps(body).encode(), "application/json; charset=UTF-8",
                       {**self._usage_headers(usage), "facebook-api-version": "v24.0"})

    def _graph_error(self, status: int, code: int, message: str, kind: str, *,
                     subcode: int | None = None, usage: dict[str, Any] | None = None) -> _Answer:
        error: dict[str, Any] = {"message": message, "type": kind, "code": code,
                                 "fbtrace_id": secrets.token_urlsafe(12)}
        if subcode is not None:
            error["error_subcode"] = subcode
        return self._graph_json(status, {"error": error}, usage)

    def _saw(self, network: str, method: str, path: str, status: int) -> None:
        with self._lock:
            self._seen.append(Seen(network, method, path, status, time.time()))


@dataclass(frozen=True)
class _Signed:
    """What oauthlib's verify_hmac_sha1 reads of a request."""

    params: list[tuple[str, str]]
    uri: str
    http_method: str
    signature: str


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: str
    headers: Any  # http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type", ""))

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def multipart(self) -> dict[str, bytes]:
        """The parts of a multipart/form-data body, by name (bytes exactly as sent)."""
        m = re.search(r'boundary="?([^";]+)"?', self.content_type)
        if not self.content_type.startswith("multipart/form-data") or m is None:
            return {}
        delimiter = b"--" + m.group(1).encode()
        out = {}
        for chunk in _parts(self.body, delimiter):
            head, sep, data = chunk.partition(b"\r\n\r\n")
            if not sep:
                continue
            name = re.search(rb'name="([^"]*)"', head)
            if name is not None:
                out[name.group(1).decode()] = data
        return out


def _parts(body: bytes, delimiter: bytes) -> Iterator[bytes]:
    pieces = body.split(delimiter)
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return  # the closing delimiter
        yield piece.removeprefix(b"\r\n").removesuffix(b"\r\n")


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _x_data(status: int, data: dict[str, Any]) -> _Answer:
    return _Answer(status, json.dumps({"data": data}).encode(), "application/json")


def _x_problem(status: int, title: str, detail: str,
               headers: dict[str, str] | None = None) -> _Answer:
    body = {"title": title, "detail": detail, "type": "about:blank", "status": status}
    return _Answer(status, json.dumps(body).encode(), "application/problem+json", headers or {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SocialStandIn/1"

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        standin: SocialStandIn = self.server.standin  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        req = _Request(self.command, split.path, split.query, self.headers, body)
        network = "twitter" if split.path.startswith("/2/") else "facebook"
        try:
            answer = standin.answer_x(req) if network == "twitter" else standin.answer_graph(req)
        except Exception as exc:  # a stand-in bug: say so, as a 500, rather than hang the client
            answer = _Answer(500, json.dumps({"detail": f"stand-in error: {exc!r}"}).encode(),
                             "application/json")
        standin._saw(network, self.command, split.path, answer.status)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests and the demo read the state, not a log
