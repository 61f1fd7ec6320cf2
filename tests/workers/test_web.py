"""The demo web tier (`farm web`) over HTTP, served by a real uvicorn on loopback against the
session's Redis: what it stores and sends, and every bad input refused before anything is."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from config.settings import Settings, get_settings
from tests.support.broker_queues import BrokerQueues
from tests.support.http import http_get
from tests.support.workers import WorkerFactory, wait_for
from workers.embedded_redis import free_port
from workers.web.app import create_app
from workers.web.serve import WebServer

pytestmark = pytest.mark.integration


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 90, 40)).save(buf, "JPEG")
    return buf.getvalue()


@dataclasses.dataclass
class Tier:
    client: httpx.Client
    token: str
    settings: Settings

    def post(self, path: str, data: dict[str, object], files: dict[str, object] | None = None,
             headers: dict[str, str] | None = None, token: str | None = None) -> httpx.Response:
        fields = {"csrf": self.token if token is None else token, **data}
        return self.client.post(path, data=fields, files=files, headers=headers)


def serve(settings: Settings) -> Iterator[Tier]:
    with WebServer(create_app(settings), settings) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        home = client.get("/")
        assert home.status_code == 200 and "farm_csrf" in client.cookies
        assert "frame-ancestors 'none'" in home.headers["content-security-policy"]
        assert "SameSite=Strict" in home.headers["set-cookie"]
        token = re.search(r'name="csrf" value="([^"]+)"', home.text)
        assert token and token.group(1) == client.cookies["farm_csrf"]
        yield Tier(client, token.group(1), settings)


@pytest.fixture
def tier(data: redis.Redis) -> Iterator[Tier]:
    yield from serve(dataclasses.replace(get_settings(), web_port=free_port(), max_upload_mb=1))


def queued(queues: BrokerQueues, queue: str) -> list[dict[str, object]]:
    """The keyword arguments of every message waiting on a queue, oldest first."""
    return [kwargs for _, kwargs in queues.messages(queue)]


def originals(s: Settings) -> list[str]:
    root = Path(s.storage_url.removeprefix("file://")) / "originals"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_upload_stores_the_original_then_enqueues_ids_and_keys_only(
        tier: Tier, queues: BrokerQueues) -> None:
    photo = jpeg()
    resp = tier.post("/upload", {"owner_id": "7", "caption": "hello", "share_to": "twitter"},
                     files={"photo": ("me.jpg", photo, "image/jpeg")})
    assert resp.status_code == 303
    photo_id = int(resp.headers["location"].removeprefix("/photos/"))
    [message] = queued(queues, "photos")
    assert message == {"photo_id": photo_id, "owner_id": 7, "original_key":
                       f"originals/{photo_id}", "caption": "hello", "share_to": ["twitter"]}
    from tasks.blobs import open_store

    store = open_store(tier.settings)
    assert store.get(f"originals/{photo_id}") == photo
    info = store.head(f"originals/{photo_id}")
    assert info is not None and info.content_type == "image/jpeg"
    assert f"/photos/{photo_id}" in tier.client.get("/").text  # listed on the front page
    # A type that is not an image's is not stored as sent (the worker judges the bytes).
    resp = tier.post("/upload", {"owner_id": "7"},
                     files={"photo": ("x.html", photo, "text/html")})
    other = int(resp.headers["location"].removeprefix("/photos/"))
    info = store.head(f"originals/{other}")
    assert info is not None and info.content_type == "application/octet-stream"
    # No worker yet: the photo has no record, and the page's poll says so.
    assert tier.client.get(f"/api/photos/{photo_id}").json()["status"] == "unknown"


def test_follow_writes_the_graph_then_sends_the_event(
        tier: Tier, data: redis.Redis, queues: BrokerQueues) -> None:
    resp = tier.post("/follow", {"follower_id": "21", "followee_id": "20", "action": "follow"})
    assert resp.status_code == 303 and resp.headers["location"] == "/users/21"
    s = tier.settings
    assert data.zscore(s.key("followers", 20), "21") == 21
    assert queued(queues, "feeds") == [{"follower_id": 21, "followee_id": 20}]
    assert '<a href="/users/20">20</a>' in tier.client.get("/users/21").text
    resp = tier.post("/follow", {"follower_id": "21", "followee_id": "20", "action": "unfollow"})
    assert resp.status_code == 303 and data.zscore(s.key("followers", 20), "21") is None
    assert len(queued(queues, "feeds")) == 2
    assert tier.client.get("/api/users/21/feed").json() == {"user_id": 21, "feed": []}


def test_forms_without_the_token_or_from_another_site_are_refused(
        tier: Tier, data: redis.Redis, queues: BrokerQueues) -> None:
    follow = {"follower_id": "31", "followee_id": "30", "action": "follow"}
    assert tier.post("/follow", follow, token="").status_code == 403
    assert tier.post("/follow", follow, token="x" * 43).status_code == 403
    assert tier.post("/follow", follow,
                     headers={"Origin": "http://evil.example"}).status_code == 403
    assert tier.post("/follow", follow,
                     headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # A forged page has no cookie: its token cannot match.
    bare = httpx.post(f"{tier.client.base_url}/follow", data={**follow, "csrf": tier.token})
    assert bare.status_code == 403
    # DNS rebinding: another name for this address is not served at all.
    assert tier.client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert data.zcard(tier.settings.key("followers", 30)) == 0 and queues.depth("feeds") == 0
    same = {"Origin": str(tier.client.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert tier.post("/follow", follow, headers=same).status_code == 303


@pytest.mark.parametrize(("fields", "files", "status", "says"), [
    ({"owner_id": "1"}, None, 400, "choose a photo"),
    ({"owner_id": "1"}, {"photo": ("e.jpg", b"", "image/jpeg")}, 400, "the file is empty"),
    ({"owner_id": "0"}, {"photo": ("a.jpg", b"x", "image/jpeg")}, 400, "owner_id"),
    ({"owner_id": "abc"}, {"photo": ("a.jpg", b"x", "image/jpeg")}, 400, "owner_id"),
    ({"owner_id": "1", "caption": "c" * 2201}, {"photo": ("a.jpg", b"x", "image/jpeg")}, 400,
     "caption"),
    ({"owner_id": "1", "share_to": "myspace"}, {"photo": ("a.jpg", b"x", "image/jpeg")}, 400,
     "share_to"),
    ({"owner_id": "1"}, {"photo": ("big.jpg", b"\xff" * (1024 * 1024 + 1), "image/jpeg")}, 413,
     "FARM_MAX_UPLOAD_MB"),
])
def test_bad_uploads_are_refused_before_anything_is_stored_or_sent(
        tier: Tier, queues: BrokerQueues, fields: dict[str, object],
        files: dict[str, object] | None, status: int, says: str) -> None:
    before = originals(tier.settings)  # the session's blob store: earlier tests' files stay
    resp = tier.post("/upload", fields, files=files or {"none": ("", b"", "text/plain")})
    assert resp.status_code == status
    assert says in resp.text
    assert queues.depth("photos") == 0 and originals(tier.settings) == before


def test_a_body_over_the_limit_is_refused_unread_and_paths_are_checked(tier: Tier) -> None:
    big = b"\0" * (2 * 1024 * 1024)
    resp = tier.client.post("/upload", content=big,
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status_code == 413
    # A well-formed form sent without a length (chunked): cut off as it passes the limit.
    head = (b'--x\r\nContent-Disposition: form-data; name="photo"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    resp = tier.client.post("/upload", content=iter([head, *[big[:500_000]] * 4, b"\r\n--x--"]),
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status_code == 413
    for path in ("/photos/abc", "/photos/0", "/users/-1", "/users/9007199254740992",
                 "/blobs/originals/1", "/blobs/photos/1/../../x.jpg",
                 "/blobs/photos/8999999999999/full.jpg",  # no test stores this photo
                 "/api/photos/123"):
        assert tier.client.get(path).status_code == 404, path
    assert tier.client.get("/upload").status_code == 405
    assert tier.client.get("/feed?user_id=12").headers["location"] == "/users/12"
    assert "user_id" in tier.client.get("/feed?user_id=0").text


def test_farm_web_serves_until_sigterm_and_refuses_other_addresses(tmp_path: Path) -> None:
    env = {**os.environ, "FARM_WEB_ADDRESS": "0.0.0.0"}
    out = subprocess.run([sys.executable, "-m", "workers.cli", "web"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "FARM_WEB_ADDRESS: '0.0.0.0' is not a loopback address" in out.stderr
    port = free_port()
    env = {**os.environ, "FARM_WEB_PORT": str(port)}
    with open(tmp_path / "web.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "web"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 200, timeout=30,
                 what="farm web serving")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, (tmp_path / "web.log").read_text()


def test_following_yourself_is_refused_with_the_checks_line(tier: Tier,
                                                           queues: BrokerQueues) -> None:
    resp = tier.post("/follow", {"follower_id": "5", "followee_id": "5", "action": "follow"})
    assert resp.status_code == 400 and "followee_id" in resp.text
    resp = tier.post("/follow", {"follower_id": "5", "followee_id": "6", "action": "block"})
    assert resp.status_code == 400 and queues.depth("feeds") == 0


def test_a_file_that_is_no_image_ends_failed_with_the_workers_reason(
        tier: Tier, workers: WorkerFactory) -> None:
    workers("cpu")
    resp = tier.post("/upload", {"owner_id": "3"},
                     files={"photo": ("notes.jpg", b"not a picture at all", "image/jpeg")})
    photo_id = resp.headers["location"].removeprefix("/photos/")

    def ended() -> dict[str, object] | None:
        rec: dict[str, object] = tier.client.get(f"/api/photos/{photo_id}").json()
        return rec if rec["status"] in ("ready", "failed") else None

    rec = wait_for(ended, timeout=30, what="the photo's record to end")
    assert isinstance(rec, dict) and rec["status"] == "failed" and rec["variants"] == []
    assert "image" in str(rec["reason"])
