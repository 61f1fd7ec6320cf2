"""The photo pipeline: an uploaded original made into the variants the apps show, stored and
recorded, then the rest of the post (fan-out, cross-posts, webhooks) let go.

Safe to run twice: variant keys are deterministic, a ready photo is a no-op, and a rerun after a
crash between upload and record rebuilds the record from the stored variants instead of
resizing again. Every run ends its record ready or failed: a refusal here, every other way a
message is dead-lettered through the tasks' ``on_dead_letter`` hooks below; a failure never
turns a ready record failed. Pillow and boto3 are imported on first use, so workers that never
resize never load them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from config.settings import Settings, get_settings
from tasks.core import prom, publish, timing
from tasks.core.errors import PermanentError
from tasks.core.redis import data_redis
from tasks.core.validation import InvalidArgument, valid_photo_id
from tasks.photos.records import READY, PhotoRecord, PhotoRecords

if TYPE_CHECKING:
    from tasks.blobs import BlobStore

JPEG = "image/jpeg"


def start_follow_ons(photo_id: int, owner_id: int, caption: str, share_to: Sequence[str]) -> None:
    """Everything that waits for a photo's variants: feeds, cross-posts, real-time subscribers."""
    publish.send("feeds.fanout", {"photo_id": photo_id, "owner_id": owner_id})
    for network in share_to:
        publish.send("social.crosspost", {
            "photo_id": photo_id, "owner_id": owner_id, "network": network, "caption": caption})
    publish.send("webhooks.deliver",
                 {"photo_id": photo_id, "owner_id": owner_id, "caption": caption})


def make_and_store_variants(photo_id: int, original_key: str, version: int, store: BlobStore,
                            s: Settings, *, reuse_stored: bool) -> dict[str, dict[str, Any]]:
    """Every variant in the store, described for the record; ImageRefused for a bad upload."""
    from tasks.blobs import photo_key
    from tasks.photos.imaging import ImageRefused, make_variants, variant_specs

    specs = variant_specs(s)
    keys = {spec.name: photo_key(photo_id, spec.name) for spec in specs}
    if reuse_stored:  # a rerun after a crash between upload and record: nothing to redo
        with timing.phase("check"):
            heads = {name: store.head(key) for name, key in keys.items()}
        if all(h is not None and h.metadata.get("version") == str(version)
               for h in heads.values()):
            return {name: describe(keys[name], int(h.metadata["width"]),
                                   int(h.metadata["height"]), h.size, version, store)
                    for name, h in heads.items() if h is not None}
    with timing.phase("fetch"):
        info = store.head(original_key)
        if info is None:
            raise PermanentError(f"original not found in storage: {original_key}")
        limit = s.max_upload_mb * 1024 * 1024
        if info.size > limit:
            raise ImageRefused(f"file is {info.size / 2**20:.1f} MiB, over the "
                               f"{s.max_upload_mb} MiB limit")
        data = store.get(original_key)
    rendered = make_variants(data, specs, quality=s.jpeg_quality, max_pixels=s.max_pixels)
    with timing.phase("upload"):
        for v in rendered:
            store.put(keys[v.name], v.data, content_type=JPEG, metadata={
                "width": str(v.width), "height": str(v.height), "version": str(version)})
    return {v.name: describe(keys[v.name], v.width, v.height, len(v.data), version, store)
            for v in rendered}


def describe(key: str, width: int, height: int, size: int, version: int,
             store: BlobStore) -> dict[str, Any]:
    return {"key": key, "width": width, "height": height, "bytes": size,
            "url": store.url(key, version=version if version > 1 else None)}


def process_photo(photo_id: int, owner_id: int, original_key: str, caption: str = "",
                  share_to: Sequence[str] = (), *, reprocess: bool = False,
                  attempt: int = 1) -> PhotoRecord | None:
    """Resize, store, record, then start the follow-on jobs (not on a reprocess). Returns the
    record as stored (None only if it was deleted meanwhile). ``attempt`` (1, then 2 for the
    first retry...) is noted on the record while it is processing."""
    from tasks.blobs import open_store
    from tasks.photos.imaging import ImageRefused

    s = get_settings()
    records = PhotoRecords(data_redis(), s)
    record = records.get(photo_id)
    if record is not None and record.status == READY and not reprocess:
        if not record.followons:  # crashed after recording, before the follow-ons went out
            start_follow_ons(photo_id, owner_id, caption, share_to)
            records.followons_sent(photo_id)
        return records.get(photo_id) or record
    # A reprocess makes new bytes under the same keys: a new version busts CDN caches.
    version = record.version if record else 1
    if record and reprocess:
        version += 1
    records.start(photo_id, owner_id, original_key, version, attempt)
    with timing.collect() as phases:
        try:
            variants = make_and_store_variants(
                photo_id, original_key, version, open_store(s),
                s, reuse_stored=record is not None and not reprocess)
        except (ImageRefused, PermanentError) as exc:
            records.failed(photo_id, str(exc))
            prom.photo_refused(str(exc))
            raise
    records.ready(photo_id, variants, phases)
    prom.photo_processed()
    _report_phases(phases)
    if not reprocess:
        start_follow_ons(photo_id, owner_id, caption, share_to)
        records.followons_sent(photo_id)
    return records.get(photo_id)


def _report_phases(phases: dict[str, float]) -> None:
    # The inner collector kept the phases for the record; the task's timing line wants them too.
    for name, ms in phases.items():
        timing.add(name, ms)


def reprocess_photo(photo_id: int, *, attempt: int = 1) -> PhotoRecord | None:
    """Remake a known photo's variants (after a size or quality change), bumping its version."""
    record = PhotoRecords(data_redis(), get_settings()).get(photo_id)
    if record is None:
        raise PermanentError(f"unknown photo {photo_id}: no record to reprocess")
    return process_photo(photo_id, record.owner_id, record.original_key, reprocess=True,
                         attempt=attempt)


# How each dead letter's reason reads on the record, before the error itself.
_FAILED_BECAUSE = {"exhausted": "retries exhausted: ", "error": "internal error: "}


def upload_dead_lettered(arguments: dict[str, Any], reason: str, error: str) -> None:
    """photos.process's ``on_dead_letter``: the record ends failed with the dead letter's error,
    whatever dead-lettered the message (exhausted retries, an invalid argument, the redelivery
    cap, a bug), written if the run never got as far as starting it: the web tier waits on it."""
    _mark_failed(arguments, reason, error, create=True)


def reprocess_dead_lettered(arguments: dict[str, Any], reason: str, error: str) -> None:
    """photos.reprocess's ``on_dead_letter``: as :func:`upload_dead_lettered`, for a photo that
    has a record (an unknown one gets none)."""
    _mark_failed(arguments, reason, error, create=False)


def _mark_failed(arguments: dict[str, Any], reason: str, error: str, *, create: bool) -> None:
    # Nothing to mark if photo_id itself is not valid. A ready record (another delivery of the
    # message finished it) and a failed one (its run said why) are kept as they are.
    try:
        photo_id = valid_photo_id("photo_id", arguments.get("photo_id"))
    except InvalidArgument:
        return
    PhotoRecords(data_redis(), get_settings()).failed_late(
        photo_id, _FAILED_BECAUSE.get(reason, "") + error, create=create)
