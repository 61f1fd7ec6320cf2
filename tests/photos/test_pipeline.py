"""photos.process end to end: originals and variants on S3 (moto's server over HTTP), real worker
processes, the photo record, follow-on jobs, idempotent reruns, throttling, reprocessing, and the
operator commands."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from config.celery_app import app
from config.settings import get_settings
from tasks import enqueue
from tasks.blobs import open_store
from tasks.core.deadletter import DeadLetterStore
from tasks.photos.records import PhotoRecords
from tests.support import corpus
from tests.support.broker_queues import BrokerQueues
from tests.support.s3_server import KEY_ID, REGION, SECRET, FaultProxy, MotoS3
from tests.support.settings import settings_env
from tests.support.workers import WorkerFactory, wait_for
from workers.cli import main as farm

pytestmark = pytest.mark.integration
VARIANTS = ("full", "sq612", "sq306", "sq150")


def s3_env(moto: MotoS3, bucket: str, endpoint: str | None = None) -> dict[str, str]:
    return {"FARM_STORAGE_URL": f"s3://{bucket}/media", "FARM_S3_ENDPOINT_URL": endpoint
            or moto.endpoint, "FARM_S3_REGION": REGION, "FARM_S3_ACCESS_KEY_ID": KEY_ID,
            "FARM_S3_SECRET_ACCESS_KEY": SECRET, "FARM_CDN_URL": "https://cdn.example.test"}


@pytest.fixture
def s3(moto_s3: MotoS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """This process's settings pointed at a fresh bucket (as the workers' will be)."""
    with settings_env(monkeypatch, s3_env(moto_s3, s3_bucket)) as env:
        yield env


def upload(key: str, data: bytes) -> None:
    open_store(get_settings()).put(key, data, content_type="image/jpeg")


def queued(queues: BrokerQueues, queue: str) -> list[tuple[str, dict[str, Any]]]:
    return queues.messages(queue)


def record(data: redis.Redis, photo_id: int):
    return PhotoRecords(data, get_settings()).get(photo_id)


def test_an_upload_becomes_variants_on_s3_a_record_and_follow_ons(
        s3: dict, s3_bucket: str, moto_s3: MotoS3, data: redis.Redis, queues: BrokerQueues,
        workers: WorkerFactory) -> None:
    workers("cpu", env=s3)
    upload("originals/7.jpg", corpus.large_photo())  # 4032x3024 stored sideways (EXIF 6)
    enqueue.photo_uploaded(7, 42, "originals/7.jpg", caption="hi", share_to=["twitter",
                                                                              "facebook"])
    rec = wait_for(lambda: (r := record(data, 7)) and r.status == "ready" and r.followons and r,
                   timeout=30, what="photo 7 ready")

    assert rec.owner_id == 42 and rec.version == 1 and rec.reason == ""
    sizes = {n: (v["width"], v["height"]) for n, v in rec.variants.items()}
    assert sizes == {"full": (810, 1080), "sq612": (612, 612), "sq306": (306, 306),
                     "sq150": (150, 150)}
    assert rec.variants["full"]["url"] == "https://cdn.example.test/media/photos/7/full.jpg"
    assert {"fetch", "decode", "resize", "encode", "upload"} <= set(rec.timings)
    client = moto_s3.client()
    for name in VARIANTS:
        head = client.head_object(Bucket=s3_bucket, Key=f"media/photos/7/{name}.jpg")
        assert head["ContentType"] == "image/jpeg"
        assert head["CacheControl"] == get_settings().cache_control
        body = client.get_object(Bucket=s3_bucket, Key=f"media/photos/7/{name}.jpg")["Body"]
        im = Image.open(io.BytesIO(body.read()))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", sizes[name])
        acl = client.get_object_acl(Bucket=s3_bucket, Key=f"media/photos/7/{name}.jpg")
        assert not any("AllUsers" in str(g["Grantee"]) for g in acl["Grants"])  # private

    # The rest of the post went out by task name, once.
    assert queued(queues, "feeds") == [("feeds.fanout", {"photo_id": 7, "owner_id": 42})]
    assert sorted(kw["network"] for _, kw in queued(queues, "social")) == ["facebook",
                                                                            "twitter"]
    assert [t for t, _ in queued(queues, "webhooks")] == ["webhooks.deliver"]

    # Run twice (a redelivery): nothing is resized, uploaded or sent again.
    before = {n: client.head_object(Bucket=s3_bucket, Key=f"media/photos/7/{n}.jpg")["ETag"]
              for n in VARIANTS}
    enqueue.photo_uploaded(7, 42, "originals/7.jpg", share_to=["twitter", "facebook"])
    wait_for(lambda: data.hget("farm:metrics:tasks", "photos.process:ok") == "2",
             what="the rerun")
    assert record(data, 7).updated_at == rec.updated_at
    assert len(queued(queues, "social")) == 2 and len(queued(queues, "feeds")) == 1
    assert before == {n: client.head_object(Bucket=s3_bucket,
                                            Key=f"media/photos/7/{n}.jpg")["ETag"]
                      for n in VARIANTS}


def test_a_refused_upload_is_recorded_and_dead_lettered_once(
        s3: dict, data: redis.Redis, queues: BrokerQueues, workers: WorkerFactory,
        moto_s3: MotoS3, s3_bucket: str) -> None:
    workers("cpu", env=s3)
    upload("originals/8.jpg", corpus.truncated_jpeg())
    task_id = enqueue.photo_uploaded(8, 42, "originals/8.jpg", share_to=["twitter"])
    enqueue.photo_uploaded(9, 42, "originals/missing.jpg")
    dead = DeadLetterStore(data, get_settings())
    entry = wait_for(lambda: dead.get(task_id), what="dead letter")
    wait_for(lambda: dead.count() == 2, what="both dead letters")

    assert (entry.reason, entry.attempts) == ("permanent", 1)  # refused: no retry
    assert entry.error.startswith("ImageRefused: truncated or corrupt image data")
    rec = record(data, 8)
    assert rec.status == "failed" and rec.reason.startswith("truncated or corrupt image data")
    assert "\n" not in rec.reason and rec.variants == {}
    assert record(data, 9).reason == "original not found in storage: originals/missing.jpg"
    listing = moto_s3.client().list_objects_v2(Bucket=s3_bucket, Prefix="media/photos/")
    assert listing.get("KeyCount", 0) == 0
    assert not any(queues.depth(q) for q in ("feeds", "social", "webhooks"))


def test_s3_throttling_is_retried_then_the_photo_is_stored(
        moto_s3: MotoS3, s3_bucket: str, s3_proxy: FaultProxy, data: redis.Redis,
        workers: WorkerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = s3_env(moto_s3, s3_bucket)
    monkeypatch.setenv("FARM_STORAGE_URL", direct["FARM_STORAGE_URL"])
    for name, value in direct.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        upload("originals/10.jpg", corpus.large_photo())
        workers("cpu", env=s3_env(moto_s3, s3_bucket, endpoint=s3_proxy.endpoint))
        s3_proxy.fail("PUT", times=2, status=503, code="SlowDown")
        enqueue.photo_uploaded(10, 42, "originals/10.jpg")
        rec = wait_for(lambda: (r := record(data, 10)) and r.status == "ready" and r,
                       timeout=30, what="photo 10 ready after throttling")
        assert set(rec.variants) == set(VARIANTS)
        # The counters are written as the task returns, a moment after the record.
        wait_for(lambda: data.hget("farm:metrics:tasks", "photos.process:ok"), what="counters")
        counts = data.hgetall("farm:metrics:tasks")
        assert counts["photos.process:retry"] == "2" and counts["photos.process:ok"] == "1"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_reprocess_bumps_the_version_and_sends_nothing_else(
        s3: dict, data: redis.Redis, queues: BrokerQueues, workers: WorkerFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    workers("cpu", env=s3)
    workers("batch", env=s3)
    upload("originals/11.jpg", corpus.large_photo())
    enqueue.photo_uploaded(11, 42, "originals/11.jpg")
    wait_for(lambda: (r := record(data, 11)) and r.followons, timeout=30, what="photo 11")
    assert farm(["photo", "reprocess", "11"]) == 0
    rec = wait_for(lambda: (r := record(data, 11)) and r.version == 2 and r.status == "ready"
                   and r, timeout=30, what="reprocessed")
    assert rec.variants["sq150"]["url"].endswith("/media/photos/11/sq150.jpg?v=2")
    assert len(queued(queues, "feeds")) == 1  # fan-out is not repeated
    capsys.readouterr()
    assert farm(["photo", "show", "11"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["version"]) == ("ready", 2)
    assert farm(["photo", "show", "12345"]) == 1


def test_a_rerun_after_a_crash_before_the_record_rebuilds_it_from_storage(
        s3: dict, data: redis.Redis) -> None:
    from tasks.core import timing
    from tasks.photos.pipeline import process_photo

    upload("originals/12.jpg", corpus.large_photo())
    first = process_photo(12, 42, "originals/12.jpg")
    # As if the worker died after uploading, before recording: the record still says processing.
    data.hset("farm:photo:12", mapping={"status": "processing", "variants": "{}"})
    with timing.collect() as phases:
        again = process_photo(12, 42, "originals/12.jpg")
    assert again.status == "ready" and again.variants == first.variants
    assert "decode" not in phases and "upload" not in phases  # rebuilt from HEADs alone


def test_farm_resize_writes_variants_or_names_the_refusal(tmp_path: Path) -> None:
    photo, junk = tmp_path / "in.jpg", tmp_path / "junk.jpg"
    photo.write_bytes(corpus.large_photo())
    junk.write_text("not a photo")
    env = {**os.environ, "FARM_ENV_FILE": os.devnull}
    ok = subprocess.run([sys.executable, "-m", "workers.cli", "resize", str(photo),
                         str(tmp_path / "out")], env=env, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    sizes = {p.stem: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"full": (810, 1080), "sq612": (612, 612), "sq306": (306, 306),
                     "sq150": (150, 150)}
    bad = subprocess.run([sys.executable, "-m", "workers.cli", "resize", str(junk),
                          str(tmp_path / "out2")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "farm resize: refused: not an image in an accepted format "
        "(JPEG, PNG, GIF, WEBP, AVIF, HEIF)"]
    assert not (tmp_path / "out2").exists()


def test_farm_photo_upload_stores_a_large_original_multipart_and_enqueues(
        s3: dict, s3_bucket: str, moto_s3: MotoS3, data: redis.Redis, queues: BrokerQueues,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FARM_S3_MULTIPART_MB", "5")
    get_settings.cache_clear()
    big = tmp_path / "big.png"
    # Random pixels do not compress: a PNG of about 12 MB, over the 5 MB multipart threshold.
    Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3)).save(big, compress_level=0)
    assert farm(["photo", "upload", str(big), "--id", "13", "--owner", "42",
                 "--share-to", "twitter"]) == 0
    assert capsys.readouterr().out.startswith("stored originals/13.png; photo 13 queued as ")
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key="media/originals/13.png")
    assert head["ContentType"] == "image/png" and head["ETag"].strip('"').endswith("-3")
    [(task, kwargs)] = queued(queues, "photos")
    assert task == "photos.process" and kwargs["original_key"] == "originals/13.png"

    assert farm(["photo", "upload", str(big), "--id", "0", "--owner", "42"]) == 2
    assert "photo_id: must be between" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_message_ends_its_photo_ready_or_failed_with_the_reason(
        data: redis.Redis, workers: WorkerFactory) -> None:
    """A real worker, its store down (S3 on a closed port): the upload's record ends failed once
    the retries run out, not "processing" for ever; so do a message with an invalid argument and
    one whose worker died under it until the redelivery cap."""
    s = get_settings()
    down = f"http://127.0.0.1:{closed_port()}"
    workers("cpu", env={"FARM_STORAGE_URL": "s3://photos/media", "FARM_S3_ENDPOINT_URL": down,
                        "FARM_S3_ACCESS_KEY_ID": KEY_ID, "FARM_S3_SECRET_ACCESS_KEY": SECRET})
    dead = DeadLetterStore(data, s)
    upload_id = enqueue.photo_uploaded(20, 42, "originals/20.jpg")
    bad_id = app.send_task("photos.process", kwargs={
        "photo_id": 21, "owner_id": "42", "original_key": "originals/21.jpg"}).id
    # As if three workers had died under this message already (kombu's redelivered mark, and
    # the count of the restored starts after the first): this delivery is one too many.
    data.set(s.key("deliveries", "lost-22", 0), s.max_deliveries - 1)
    app.send_task("photos.process", kwargs={"photo_id": 22, "owner_id": 42,
                                            "original_key": "originals/22.jpg"}, task_id="lost-22",
                  headers={"redelivered": True})

    ended = wait_for(lambda: all((r := record(data, p)) and r.status == "failed"
                                 for p in (20, 21, 22)), timeout=60, what="three failed records")
    assert ended
    rec = record(data, 20)
    assert rec.reason.startswith("retries exhausted: TransientError: S3 head s3://photos/media/")
    assert "EndpointConnectionError: Could not connect" in rec.reason
    assert rec.attempt == s.retry_max + 1 and "\n" not in rec.reason
    assert dead.get(upload_id).reason == "exhausted"
    assert record(data, 21).reason == ("InvalidArgument: owner_id: must be an integer, "
                                       "got str '42'")
    assert dead.get(bad_id).reason == "permanent"
    assert record(data, 22).reason.startswith(
        f"WorkerLost: started {s.max_deliveries} times and never finished")
    assert dead.get("lost-22").reason == "redelivered"
    assert data.zcard(s.key("photos", "processing")) == 0  # none left for the sweep
