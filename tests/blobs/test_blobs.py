"""The blob store: one contract for both backends, then what only S3 or only files can show.

S3 runs through boto3 over HTTP against moto's standalone server (tests/support/s3_server.py),
with a fault-injecting proxy for throttling and errors; nothing is mocked in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, load_settings
from tasks.blobs import BlobInfo, BlobNotFound, BlobStore, open_store, photo_key
from tasks.blobs.local import META_SUFFIX, LocalStore, _atomic_write, root_from_url
from tasks.core.errors import PermanentError, TransientError
from tests.support.s3_server import FaultProxy, MotoS3
from workers.embedded_redis import free_port

NO_DOTENV = Path("/nonexistent")
PREFIX = "some/prefix"
KEY = "photos/1/full.jpg"
JPEG = b"\xff\xd8\xff\xe0" + b"photo" * 100
MIB = 1024 * 1024


def local_settings(root: Path, **env: str) -> Settings:
    return load_settings({"FARM_STORAGE_URL": f"file://{root}", **env}, dotenv=NO_DOTENV)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A factory for the store under test: make(**FARM_* overrides) -> BlobStore."""
    if request.param == "local":
        return lambda **env: open_store(local_settings(tmp_path / "blobs", **env))
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    bucket = moto.new_bucket()
    return lambda **env: open_store(moto.settings(bucket, PREFIX, **env))


@pytest.fixture
def store(backend: Any) -> BlobStore:
    return backend()


# --- the contract, on both backends ---------------------------------------------------------


def test_photo_key() -> None:
    assert photo_key(1, "full") == "photos/1/full.jpg"
    assert photo_key(42, "612") == "photos/42/612.jpg"
    for bad_id, variant in [(0, "full"), (-1, "full"), (True, "full"), ("1", "full"),
                            (1, "a/b"), (1, "../x"), (1, "")]:
        with pytest.raises(ValueError):
            photo_key(bad_id, variant)  # type: ignore[arg-type]


def test_round_trip(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)
    store.put(KEY, JPEG, content_type="image/jpeg", metadata={"Photo-Id": "1", "variant": "full"})
    assert store.get(KEY) == JPEG
    # names come back lower-cased on both backends, as S3 does it
    assert store.head(KEY) == BlobInfo(KEY, len(JPEG), "image/jpeg",
                                       {"photo-id": "1", "variant": "full"})


def test_missing_key(store: BlobStore) -> None:
    assert store.head("photos/404/full.jpg") is None
    with pytest.raises(BlobNotFound) as info:
        store.get("photos/404/full.jpg")
    assert isinstance(info.value, PermanentError)
    assert "photos/404/full.jpg" in str(info.value)
    store.delete("photos/404/full.jpg")  # absent: no error


def test_delete(store: BlobStore) -> None:
    store.put(KEY, JPEG, content_type="image/jpeg")
    store.delete(KEY)
    assert store.head(KEY) is None
    with pytest.raises(BlobNotFound):
        store.get(KEY)
    store.delete(KEY)


def test_idempotent_rerun(store: BlobStore) -> None:
    for _ in range(2):
        store.put(KEY, JPEG, content_type="image/jpeg", metadata={"photo-id": "1"})
    assert store.get(KEY) == JPEG
    assert store.head(KEY) == BlobInfo(KEY, len(JPEG), "image/jpeg", {"photo-id": "1"})


def test_overwrite_replaces_bytes_type_and_metadata(store: BlobStore) -> None:
    store.put(KEY, JPEG, content_type="image/jpeg", metadata={"a": "1"})
    store.put(KEY, b"webp!", content_type="image/webp")
    assert store.get(KEY) == b"webp!"
    assert store.head(KEY) == BlobInfo(KEY, 5, "image/webp", {})


def test_put_file(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "original.heic"
    src.write_bytes(b"heic" * 1000)
    store.put_file("originals/7.heic", src, content_type="image/heic", metadata={"owner": "9"})
    assert store.get("originals/7.heic") == src.read_bytes()
    assert store.head("originals/7.heic") == BlobInfo("originals/7.heic", 4000, "image/heic",
                                                      {"owner": "9"})
    with pytest.raises(FileNotFoundError):  # a local problem, not the store's
        store.put_file("originals/8.heic", tmp_path / "nope", content_type="image/heic")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "photos/../../x", "photos//1.jpg",
                                 "./photos/1.jpg", "photos/1/..", "a\\b", "a\nb"])
def test_key_validation(store: BlobStore, key: str) -> None:
    calls = [lambda: store.put(key, b"x", content_type="image/jpeg"),
             lambda: store.get(key), lambda: store.head(key), lambda: store.delete(key),
             lambda: store.url(key)]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_metadata_validation(store: BlobStore) -> None:
    for bad in ({"bad name": "x"}, {"ok": "caf\u00e9"}, {"ok": "a\nb"}):
        with pytest.raises(ValueError):
            store.put(KEY, b"x", content_type="image/jpeg", metadata=bad)


def test_cdn_url_and_version(backend: Any) -> None:
    store = backend(FARM_CDN_URL="https://cdn.example.com/")
    full = f"{PREFIX}/{KEY}" if "s3" in type(store).__name__.lower() else KEY
    assert store.url(KEY) == f"https://cdn.example.com/{full}"
    assert store.url(KEY, version=3) == f"https://cdn.example.com/{full}?v=3"
    assert store.url("photos/1/a b.jpg").endswith("/photos/1/a%20b.jpg")


def test_open_store_is_cached_per_process_and_settings(tmp_path: Path) -> None:
    s = local_settings(tmp_path)
    assert open_store(s) is open_store(local_settings(tmp_path))
    assert open_store(s) is not open_store(local_settings(tmp_path, FARM_CDN_URL="https://c"))


def test_package_import_does_not_import_boto3() -> None:
    # The web tier imports tasks.* to enqueue; it must not pay for (or need) boto3.
    code = "import sys, tasks.blobs; sys.exit('boto3' in sys.modules)"
    root = Path(__file__).parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# --- S3 only -----------------------------------------------------------------------------------


def test_s3_keys_headers_and_privacy(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX))
    store.put(KEY, JPEG, content_type="image/jpeg")
    raw = moto_s3.client()
    listed = raw.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"{PREFIX}/{KEY}"]
    head = raw.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{KEY}")
    assert head["ContentType"] == "image/jpeg"
    assert head["CacheControl"] == Settings().cache_control
    grants = raw.get_object_acl(Bucket=s3_bucket, Key=f"{PREFIX}/{KEY}")["Grants"]
    assert not [g for g in grants if g["Grantee"].get("URI", "").endswith("/global/AllUsers")]


def test_s3_public_read_and_cache_control_when_configured(moto_s3: MotoS3,
                                                          s3_bucket: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, "", FARM_S3_PUBLIC_READ="1",
                                        FARM_CACHE_CONTROL="public, max-age=60"))
    store.put(KEY, JPEG, content_type="image/jpeg")
    raw = moto_s3.client()
    assert raw.head_object(Bucket=s3_bucket, Key=KEY)["CacheControl"] == "public, max-age=60"
    grants = raw.get_object_acl(Bucket=s3_bucket, Key=KEY)["Grants"]
    assert {"READ"} == {g["Permission"] for g in grants
                        if g["Grantee"].get("URI", "").endswith("/global/AllUsers")}


def test_s3_rerun_leaves_one_object(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX))
    for _ in range(3):
        store.put(KEY, JPEG, content_type="image/jpeg")
    versions = moto_s3.client().list_object_versions(Bucket=s3_bucket).get("Versions", [])
    assert [v["Key"] for v in versions] == [f"{PREFIX}/{KEY}"]


def test_s3_large_original_goes_multipart(moto_s3: MotoS3, s3_bucket: str,
                                          tmp_path: Path) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX, FARM_S3_MULTIPART_MB="5"))
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    big.write_bytes(os.urandom(11 * MIB))
    small.write_bytes(os.urandom(MIB))
    store.put_file("originals/big.jpg", big, content_type="image/jpeg", metadata={"owner": "3"})
    store.put_file("originals/small.jpg", small, content_type="image/jpeg")
    raw = moto_s3.client()
    head = raw.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/originals/big.jpg")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB parts
    assert (head["ContentType"], head["CacheControl"], head["Metadata"]) == (
        "image/jpeg", Settings().cache_control, {"owner": "3"})
    assert "-" not in raw.head_object(Bucket=s3_bucket,
                                      Key=f"{PREFIX}/originals/small.jpg")["ETag"]
    assert store.get("originals/big.jpg") == big.read_bytes()


def test_s3_urls(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX))
    assert store.url(KEY) == f"{moto_s3.endpoint}/{s3_bucket}/{PREFIX}/{KEY}"
    assert store.url(KEY, version=2) == f"{moto_s3.endpoint}/{s3_bucket}/{PREFIX}/{KEY}?v=2"
    aws = dict(FARM_S3_REGION="eu-west-1")
    on_aws = open_store(load_settings({"FARM_STORAGE_URL": "s3://pics/p", **aws},
                                      dotenv=NO_DOTENV))  # no request is made: no creds needed
    assert on_aws.url(KEY, 5) == f"https://pics.s3.eu-west-1.amazonaws.com/p/{KEY}?v=5"


def test_s3_503_then_success_is_the_farms_retry(moto_s3: MotoS3, s3_bucket: str,
                                                s3_proxy: FaultProxy) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX, endpoint=s3_proxy.endpoint))
    s3_proxy.fail("PUT", times=2, retry_after="7")
    with pytest.raises(TransientError) as first:
        store.put(KEY, JPEG, content_type="image/jpeg")
    assert first.value.retry_after == 7.0
    assert "SlowDown" in str(first.value) and s3_bucket in str(first.value)
    assert s3_proxy.count("PUT") == 1  # botocore did not retry behind the farm's back
    with pytest.raises(TransientError):
        store.put(KEY, JPEG, content_type="image/jpeg")
    store.put(KEY, JPEG, content_type="image/jpeg")  # the farm's third attempt
    assert (s3_proxy.count("PUT"), s3_proxy.count("PUT", 503)) == (3, 2)
    body = moto_s3.client().get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{KEY}")["Body"].read()
    assert body == JPEG


@pytest.mark.parametrize(("method", "status", "code"), [
    ("PUT", 503, "SlowDown"), ("PUT", 500, "InternalError"), ("GET", 503, "SlowDown"),
    ("HEAD", 503, "SlowDown"), ("DELETE", 502, "BadGateway"), ("PUT", 400, "RequestTimeout"),
])
def test_s3_transient_errors(moto_s3: MotoS3, s3_bucket: str, s3_proxy: FaultProxy,
                             method: str, status: int, code: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX, endpoint=s3_proxy.endpoint))
    store.put(KEY, JPEG, content_type="image/jpeg")
    s3_proxy.fail(method, status=status, code=code)
    call = {"PUT": lambda: store.put(KEY, JPEG, content_type="image/jpeg"),
            "GET": lambda: store.get(KEY), "HEAD": lambda: store.head(KEY),
            "DELETE": lambda: store.delete(KEY)}[method]
    with pytest.raises(TransientError) as info:
        call()  # a HEAD that fails must raise, never pass for "missing"
    assert info.value.retry_after is None
    assert s3_proxy.count(method, status) == 1
    call()


def test_s3_multipart_part_throttled_is_transient(moto_s3: MotoS3, s3_bucket: str,
                                                  s3_proxy: FaultProxy, tmp_path: Path) -> None:
    # upload_file would wrap this in S3UploadFailedError and hide the status; we must not.
    store = open_store(moto_s3.settings(s3_bucket, PREFIX, endpoint=s3_proxy.endpoint,
                                        FARM_S3_MULTIPART_MB="5"))
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(11 * MIB))
    s3_proxy.fail("PUT", path_contains="partNumber=2", retry_after="2")
    with pytest.raises(TransientError) as info:
        store.put_file(KEY, big, content_type="image/jpeg")
    assert info.value.retry_after == 2.0
    assert store.head(KEY) is None  # a failed multipart upload leaves no object
    store.put_file(KEY, big, content_type="image/jpeg")
    assert store.get(KEY) == big.read_bytes()


def test_s3_access_denied_is_permanent(moto_s3: MotoS3, s3_bucket: str,
                                       s3_proxy: FaultProxy) -> None:
    store = open_store(moto_s3.settings(s3_bucket, PREFIX, endpoint=s3_proxy.endpoint))
    s3_proxy.fail("PUT", status=403, code="AccessDenied", message="Access Denied")
    with pytest.raises(PermanentError) as info:
        store.put(KEY, JPEG, content_type="image/jpeg")
    message = str(info.value)
    assert not isinstance(info.value, BlobNotFound)
    assert "AccessDenied" in message and f"s3://{s3_bucket}/{PREFIX}/{KEY}" in message
    assert "\n" not in message


def test_s3_missing_bucket_is_permanent_not_missing_key(moto_s3: MotoS3) -> None:
    store = open_store(moto_s3.settings("never-created-bucket", PREFIX))
    for call in (lambda: store.put(KEY, JPEG, content_type="image/jpeg"),
                 lambda: store.get(KEY)):
        with pytest.raises(PermanentError) as info:
            call()
        assert type(info.value) is PermanentError
        assert "NoSuchBucket" in str(info.value) and "never-created-bucket" in str(info.value)


def test_s3_unreachable_is_transient(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = open_store(moto_s3.settings(s3_bucket, endpoint=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TransientError) as info:
        store.put(KEY, JPEG, content_type="image/jpeg")
    assert "EndpointConnectionError" in str(info.value)


def test_s3_client_is_made_after_fork(moto_s3: MotoS3, s3_bucket: str) -> None:
    settings = moto_s3.settings(s3_bucket, PREFIX)
    parent = open_store(settings)
    parent.put("photos/1/parent.jpg", b"p", content_type="image/jpeg")
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only, never return into pytest
        code = 3
        try:
            child = open_store(settings)
            fresh = child is not parent and child.client is not parent.client  # type: ignore
            child.put("photos/1/child.jpg", b"c", content_type="image/jpeg")
            code = 0 if fresh and child is open_store(settings) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.get("photos/1/child.jpg") == b"c"
    assert open_store(settings) is parent


# --- files only --------------------------------------------------------------------------------


def test_local_layout_and_sidecar(tmp_path: Path) -> None:
    store = open_store(local_settings(tmp_path / "blobs"))
    store.put(KEY, JPEG, content_type="image/jpeg", metadata={"photo-id": "1"})
    data = tmp_path / "blobs" / KEY
    assert data.read_bytes() == JPEG
    assert sorted(p.name for p in data.parent.iterdir()) == ["full.jpg", "full.jpg" + META_SUFFIX]
    assert store.url(KEY) == data.as_uri()
    assert store.url(KEY, 4) == data.as_uri() + "?v=4"
    (data.parent / ("full.jpg" + META_SUFFIX)).unlink()  # as if we crashed between the two
    assert store.head(KEY) == BlobInfo(KEY, len(JPEG), "application/octet-stream", {})
    with pytest.raises(ValueError):
        store.put("x" + META_SUFFIX, b"{}", content_type="application/json")


def test_local_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "full.jpg"
    target.write_bytes(b"old")

    def half_then_crash(f: Any) -> None:
        f.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["full.jpg"]  # no temp file left


def test_local_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert root_from_url("file:///srv/blobs") == Path("/srv/blobs")
    assert root_from_url("file://localhost/srv/blobs") == Path("/srv/blobs")
    assert root_from_url("file://./var/blobs") == tmp_path.resolve() / "var" / "blobs"
    default = LocalStore.from_settings(load_settings({}, dotenv=NO_DOTENV))
    assert isinstance(default, LocalStore)
    assert default.root == tmp_path.resolve() / "var" / "blobs"
    for bad in ("file://", "s3://b/p"):
        with pytest.raises(ValueError):
            root_from_url(bad)


def test_local_readers_never_see_half_a_blob(tmp_path: Path) -> None:
    # Files only: on S3 a PUT is atomic by S3's own guarantee, and moto, serving a GET while the
    # same key is overwritten, sometimes answers 500 (its own race), which would test moto.
    store = open_store(local_settings(tmp_path))
    a, b = b"a" * (2 * MIB), b"b" * (2 * MIB)
    store.put(KEY, a, content_type="image/jpeg")
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            for data in (b, a):
                store.put(KEY, data, content_type="image/jpeg")

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(30):
            assert store.get(KEY) in (a, b)
    finally:
        stop.set()
        t.join()
