"""The embedded default: blobs as files under one directory (file:///path or file://./relative).

Every write goes to a temp file in the target directory and is renamed into place, so a reader
sees the old file or the new one, never half of one, and a rerun overwrites cleanly. Content type
and metadata live in a sidecar ``<file>.meta.json``, written after the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from config.settings import Settings
from tasks.blobs.base import BlobInfo, BlobNotFound, check_key, clean_metadata, public_url

META_SUFFIX = ".meta.json"


def root_from_url(url: str, cwd: Path | None = None) -> Path:
    """file:///abs/path, file://localhost/abs/path, or file://./rel (relative to the cwd)."""
    if not url.startswith("file://"):
        raise ValueError(f"not a file:// URL: {url!r}")
    rest = url.removeprefix("file://")
    if rest.startswith("localhost/"):
        rest = rest.removeprefix("localhost")
    if not rest:
        raise ValueError(f"file:// URL names no directory: {url!r}")
    return ((cwd or Path.cwd()) / rest).resolve()  # an absolute rest replaces the cwd


class LocalStore:
    def __init__(self, root: Path, cdn_url: str = "") -> None:
        self.root = root
        self.cdn_url = cdn_url

    @classmethod
    def from_settings(cls, s: Settings) -> LocalStore:
        return cls(root_from_url(s.storage_url), s.cdn_url)

    def _path(self, key: str) -> Path:
        if check_key(key).endswith(META_SUFFIX):
            raise ValueError(f"blob key must not end in {META_SUFFIX} (reserved), got {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, content_type: str,
            metadata: Mapping[str, str] | None = None) -> None:
        self._store(key, lambda f: f.write(data), content_type, metadata)

    def put_file(self, key: str, path: Path, *, content_type: str,
                 metadata: Mapping[str, str] | None = None) -> None:
        with open(path, "rb") as src:
            self._store(key, lambda f: shutil.copyfileobj(src, f, 1 << 20), content_type, metadata)

    def _store(self, key: str, write: Callable[[IO[bytes]], object], content_type: str,
               metadata: Mapping[str, str] | None) -> None:
        path = self._path(key)
        meta = {"content_type": content_type, "metadata": clean_metadata(metadata)}
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, write)
        _atomic_write(path.with_name(path.name + META_SUFFIX),
                      lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"no blob {key!r} under {self.root}") from None

    def head(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            meta = json.loads(path.with_name(path.name + META_SUFFIX).read_text())
        except (OSError, ValueError):  # a crash between data and sidecar: the bytes still count
            meta = {}
        return BlobInfo(key, st.st_size, meta.get("content_type", "application/octet-stream"),
                        dict(meta.get("metadata", {})))

    def delete(self, key: str) -> None:
        path = self._path(key)
        # Data first: a sidecar left behind by a crash is invisible, since head() needs the data.
        for victim in (path, path.with_name(path.name + META_SUFFIX)):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                victim.unlink()

    def url(self, key: str, version: int | None = None) -> str:
        if self.cdn_url:
            return public_url(self.cdn_url, check_key(key), version)
        uri = self._path(key).as_uri()
        return uri if version is None else f"{uri}?v={int(version)}"


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # rename must not land before the bytes after a power cut
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
