"""The blob store interface: photo bytes live here, never in the broker.

Keys are relative and deterministic (``photos/{id}/{variant}.jpg``), so a rerun of a task writes
the same object again instead of a second one; each store adds its own prefix or root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from config.settings import Settings, get_settings
from tasks.core.errors import PermanentError
from tasks.core.process_local import ProcessLocal
from tasks.core.validation import InvalidArgument, valid_storage_key

_VARIANT = re.compile(r"[A-Za-z0-9_-]+")
_META_KEY = re.compile(r"[a-z0-9_-]+")


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str
    metadata: dict[str, str]


class BlobNotFound(PermanentError):
    """The key does not exist."""


@runtime_checkable
class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str,
            metadata: Mapping[str, str] | None = None) -> None: ...

    def put_file(self, key: str, path: Path, *, content_type: str,
                 metadata: Mapping[str, str] | None = None) -> None:
        """Streams from disk; multipart above settings.s3_multipart_mb on S3."""
        ...

    def get(self, key: str) -> bytes:
        """Raises BlobNotFound."""
        ...

    def head(self, key: str) -> BlobInfo | None: ...

    def delete(self, key: str) -> None:
        """No error if absent."""
        ...

    def url(self, key: str, version: int | None = None) -> str:
        """``?v=N`` is appended when given, so a reprocessed photo gets past CDN caches."""
        ...


def photo_key(photo_id: int, variant: str) -> str:
    if isinstance(photo_id, bool) or not isinstance(photo_id, int) or photo_id <= 0:
        raise ValueError(f"photo_id must be a positive integer, got {photo_id!r}")
    if not _VARIANT.fullmatch(variant):
        raise ValueError(f"variant must be letters, digits, '_' or '-', got {variant!r}")
    return f"photos/{photo_id}/{variant}.jpg"


def check_key(key: str) -> str:
    """A relative key with no '.', '..' or empty segments, so no store can be walked out of
    (the same rule the enqueue API and the tasks check keys with)."""
    try:
        return valid_storage_key("blob key", key)
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None


def clean_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """S3 lower-cases user-metadata names and sends them as ASCII headers; both stores enforce
    the same so metadata round-trips identically whichever backend is configured."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not isinstance(name, str) or not _META_KEY.fullmatch(name.lower()):
            raise ValueError(f"metadata name must be letters, digits, '_' or '-', got {name!r}")
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata {name!r} must be printable ASCII, got {value!r}")
        out[name.lower()] = value
    return out


def public_url(base: str, full_key: str, version: int | None) -> str:
    url = f"{base.rstrip('/')}/{quote(full_key, safe='/')}"
    if version is not None:
        url += f"{'&' if '?' in url else '?'}v={int(version)}"
    return url


# One store (and so one boto3 client and connection pool) per process, made after fork: sockets
# shared across a fork interleave bytes from two processes. Beyond the URL, the key holds every
# setting a store depends on, so a caller passing different settings never gets a store built
# for others.
_stores: ProcessLocal[tuple[object, ...], BlobStore] = ProcessLocal("blob stores")


def _cache_key(s: Settings) -> tuple[object, ...]:
    return (s.storage_url, s.s3_endpoint_url, s.s3_region, s.s3_access_key_id,
            s.s3_secret_access_key, s.s3_public_read, s.s3_multipart_mb, s.cdn_url,
            s.cache_control, s.io_threads)


def open_store(settings: Settings | None = None) -> BlobStore:
    """The store FARM_STORAGE_URL names; boto3 is imported only when it is s3://."""
    s = settings or get_settings()
    return _stores.get(_cache_key(s), lambda: _build(s))


def _build(s: Settings) -> BlobStore:
    if s.storage_url.startswith("s3://"):
        from tasks.blobs.s3 import S3Store

        return S3Store.from_settings(s)
    from tasks.blobs.local import LocalStore

    return LocalStore.from_settings(s)
