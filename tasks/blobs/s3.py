"""The S3 store (s3://bucket/prefix) through boto3: AWS, or any S3 server at FARM_S3_ENDPOINT_URL.

Retries: botocore makes exactly one attempt per call and the farm's task policy does all the
retrying. That policy is the one that counts attempts, backs off with full jitter, honours
Retry-After and dead-letters; botocore retrying underneath it would multiply the two (5 farm
attempts x 3 botocore attempts = 15 requests at a prefix that asked us to slow down), sleep inside
a worker thread where no one sees it, and make the dead letter's attempt count a lie. The cost is
that a single dropped connection becomes a farm retry rather than an in-process one; tasks are
idempotent (deterministic keys, overwrite on rerun), so that is only a short delay.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from config.settings import Settings
from tasks.blobs.base import BlobInfo, BlobNotFound, check_key, clean_metadata, public_url
from tasks.core.backoff import parse_retry_after
from tasks.core.errors import PermanentError, TransientError

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest allowed part (but the last)
TRANSFER_THREADS = 4  # parts in flight per upload; the io pool already runs many uploads at once
CONNECT_TIMEOUT = 5.0
# Per socket read, not per request: S3 answers a PUT within seconds of receiving the body. A hung
# connection is better handed back to the farm's policy than held for botocore's default 60 s.
READ_TIMEOUT = 30.0

_TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "BandwidthLimitExceeded", "RequestLimitExceeded",
    "TooManyRequestsException", "OperationAborted",
})
# botocore's network failures: connect/read timeouts, refused or reset connections, a body cut off.
_NETWORK_ERRORS = (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)


class _Credentials(TypedDict, total=False):
    aws_access_key_id: str
    aws_secret_access_key: str


def make_client(s: Settings) -> Any:
    """A new client; call it after fork (open_store does), never share one across processes."""
    custom = bool(s.s3_endpoint_url)
    config = Config(
        region_name=s.s3_region,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # One attempt in all (see the module docstring). Not "max_attempts": 1, which in client
        # config counts retries, not attempts (botocore adds one), and would double every call.
        retries={"mode": "standard", "total_max_attempts": 1},
        # One client serves every io thread plus each upload's part threads; the default pool
        # of 10 would make threads queue for (and discard) connections.
        max_pool_connections=max(10, s.io_threads) + TRANSFER_THREADS,
        # S3-compatible servers (MinIO, Ceph, moto) rarely have wildcard DNS for virtual hosts,
        # and many reject the CRC trailers boto3 >= 1.36 sends by default; AWS gets both.
        s3={"addressing_style": "path"} if custom else None,
        request_checksum_calculation="when_required" if custom else "when_supported",
        response_checksum_validation="when_required" if custom else "when_supported",
    )
    creds: _Credentials = {}
    if s.s3_access_key_id and s.s3_secret_access_key:  # else the standard AWS chain
        creds = {"aws_access_key_id": s.s3_access_key_id,
                 "aws_secret_access_key": s.s3_secret_access_key}
    # A private session: creating clients from boto3's default session is not thread-safe.
    return boto3.session.Session(**creds).client(
        "s3", endpoint_url=s.s3_endpoint_url or None, config=config)


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, *, region: str = "us-east-1",
                 endpoint_url: str = "", cdn_url: str = "", cache_control: str = "",
                 public_read: bool = False, multipart_mb: int = 16) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.cdn_url = cdn_url
        self.cache_control = cache_control
        self.public_read = public_read
        threshold = multipart_mb * MIB
        self.transfer = TransferConfig(
            multipart_threshold=threshold,
            multipart_chunksize=max(threshold, MIN_PART),
            max_concurrency=TRANSFER_THREADS,
            # CRT brings its own retry loop and ignores the client's config; stay on the classic
            # manager, whose part requests go through our single-attempt client.
            preferred_transfer_client="classic",
        )

    @classmethod
    def from_settings(cls, s: Settings) -> S3Store:
        url = urlsplit(s.storage_url)
        return cls(make_client(s), url.netloc, url.path, region=s.s3_region,
                   endpoint_url=s.s3_endpoint_url, cdn_url=s.cdn_url,
                   cache_control=s.cache_control, public_read=s.s3_public_read,
                   multipart_mb=s.s3_multipart_mb)

    def full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _extra(self, content_type: str, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": clean_metadata(metadata)}
        if self.cache_control:
            extra["CacheControl"] = self.cache_control
        if self.public_read:  # otherwise no ACL is sent: the bucket's private default applies
            extra["ACL"] = "public-read"
        return extra

    @contextmanager
    def _mapped(self, op: str, full: str) -> Iterator[None]:
        try:
            yield
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._error(exc, op, full) from exc

    def put(self, key: str, data: bytes, *, content_type: str,
            metadata: Mapping[str, str] | None = None) -> None:
        full = self.full_key(key)
        extra = self._extra(content_type, metadata)
        with self._mapped("put", full):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)

    def put_file(self, key: str, path: Path, *, content_type: str,
                 metadata: Mapping[str, str] | None = None) -> None:
        full = self.full_key(key)
        extra = self._extra(content_type, metadata)
        # upload_fileobj, not upload_file: the latter rewraps ClientError in S3UploadFailedError,
        # losing the status code that tells throttling from a missing bucket. A local OSError
        # (no such file) is not S3's doing and passes through unmapped.
        with open(path, "rb") as f, self._mapped("put", full):
            self.client.upload_fileobj(f, self.bucket, full, ExtraArgs=extra,
                                       Config=self.transfer)

    def get(self, key: str) -> bytes:
        full = self.full_key(key)
        # Both inside the mapping: a body cut off mid-read is as transient as a refused connect.
        with self._mapped("get", full), \
                self.client.get_object(Bucket=self.bucket, Key=full)["Body"] as body:
            return bytes(body.read())

    def head(self, key: str) -> BlobInfo | None:
        full = self.full_key(key)
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=full)
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            err = self._error(exc, "head", full)
            if isinstance(err, BlobNotFound):  # HEAD has no body: a missing bucket also lands here
                return None
            raise err from exc
        return BlobInfo(key, r["ContentLength"], r.get("ContentType", "application/octet-stream"),
                        dict(r.get("Metadata", {})))

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        with self._mapped("delete", full):  # S3 answers 204 whether or not the key existed
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def url(self, key: str, version: int | None = None) -> str:
        full = self.full_key(key)
        if self.cdn_url:
            return public_url(self.cdn_url, full, version)
        if self.endpoint_url:
            return public_url(f"{self.endpoint_url.rstrip('/')}/{quote(self.bucket)}", full,
                              version)
        if "." in self.bucket:  # dotted names break the wildcard certificate of virtual hosts
            return public_url(f"https://s3.{self.region}.amazonaws.com/{self.bucket}", full,
                              version)
        return public_url(f"https://{self.bucket}.s3.{self.region}.amazonaws.com", full, version)

    def _error(self, exc: Exception, op: str, full: str) -> TransientError | PermanentError:
        """The farm's error for a boto3 failure: transient, not found, or permanent."""
        where = f"s3://{self.bucket}/{full}"
        if isinstance(exc, _NETWORK_ERRORS):
            return TransientError(f"S3 {op} {where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, bexc.ClientError):
            err = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            code = str(err.get("Code") or status)
            msg = " ".join(str(err.get("Message") or "").split())  # one line, always
            text = f"S3 {op} {where}: {code} (HTTP {status}){': ' + msg if msg else ''}"
            if status >= 500 or status == 429 or code in _TRANSIENT_CODES \
                    or code.startswith("Throttl"):
                retry_after = parse_retry_after(meta.get("HTTPHeaders", {}).get("retry-after"))
                return TransientError(text, retry_after=retry_after)
            if code in ("NoSuchKey", "404", "NotFound") and op in ("get", "head"):
                return BlobNotFound(text)
            return PermanentError(text)
        # The rest (no credentials, invalid parameters) is configuration: retrying cannot help.
        return PermanentError(f"S3 {op} {where}: {type(exc).__name__}: {exc}")
