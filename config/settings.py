"""One typed settings object, read from FARM_* environment variables (and an optional .env).
Long because it is the one place every setting, its default and its check live.

Every field maps to ``FARM_<NAME>``; secret fields may instead be read from the file named by
``FARM_<NAME>_FILE``. A bad value stops start-up with one line naming the variable.

Not pydantic-settings: config/ is imported by the web tier, and a dataclass with one small
loader (ints, floats, bools, strings, paths, lists) does the job without a compiled dependency.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

PREFIX = "FARM_"


class SettingsError(ValueError):
    """A FARM_* variable is missing or wrong; the message names it."""


def _secret(default: str = "") -> Any:
    return field(default=default, metadata={"secret": True}, repr=False)


@dataclass(frozen=True)
class Settings:
    # Broker and data Redis are separate settings; the demo points both at one embedded server.
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str = "redis://127.0.0.1:6379/1"
    result_url: str = ""  # empty: the data Redis; results are stored only for tasks that need them
    # Redis Sentinel (README, "Redis failover"). With FARM_SENTINELS (host:port, comma separated)
    # the broker and the data Redis are found by master name, FARM_BROKER_MASTER and
    # FARM_REDIS_MASTER, and every client asks the sentinels again after a failover. A URL whose
    # server is named so gives no host or port, only what the sentinels do not know: password
    # and database (redis://:PASSWORD@/0). The result backend follows FARM_REDIS_MASTER when
    # FARM_RESULT_URL is empty; feed shards (FARM_FEED_SHARDS) stay plain URLs.
    sentinels: tuple[str, ...] = ()
    sentinel_password: str = _secret()  # the sentinels' own (their requirepass); empty: none
    broker_master: str = ""  # empty: FARM_BROKER_URL names its server
    redis_master: str = ""  # empty: FARM_REDIS_URL names its server
    key_prefix: str = "farm"
    storage_url: str = "file://./var/blobs"
    # S3 (when FARM_STORAGE_URL is s3://...): credentials fall back to the standard AWS chain.
    s3_endpoint_url: str = ""  # empty: AWS itself; set for MinIO, moto, other S3 servers
    s3_region: str = "us-east-1"
    s3_access_key_id: str = _secret()
    s3_secret_access_key: str = _secret()
    s3_public_read: bool = False  # objects are private unless this says otherwise
    s3_multipart_mb: int = 16  # uploads above this size go multipart
    cdn_url: str = ""  # base URL photos are served from; empty: the storage's own URL
    cache_control: str = "public, max-age=31536000, immutable"

    # Photos: the variants the apps show, and what an upload may be.
    photo_full_size: int = 1080  # long edge of the "full" variant
    photo_squares: tuple[int, ...] = (612, 306, 150)  # centre-cropped squares, largest first
    jpeg_quality: int = 85
    max_pixels: int = 50_000_000  # refused from the header, before any decoding
    max_upload_mb: int = 50
    state_dir: Path = Path("var")
    log_level: str = "INFO"
    # botocore, urllib3 and the X client libraries stay at INFO whatever FARM_LOG_LEVEL says:
    # at DEBUG botocore logs each S3 request's Authorization header (key id and signature),
    # tweepy and oauthlib the X credentials (workers/logs.py). 1 lets them through.
    wire_log: bool = False

    # Time limits. The visibility timeout must outlast the longest task plus the longest retry
    # delay, or Redis hands a still-running (or still-waiting) task to a second worker.
    task_time_limit: int = 300
    task_soft_time_limit: int = 270
    visibility_timeout: int = 3600
    restore_interval: int = 30  # how often a worker looks for messages a dead worker held
    # Reliable fetch (config/reliable_redis.py): taking a message and recording it in flight are
    # one atomic step. A consumer silent for inflight_heartbeat seconds is taken for dead, and
    # what its blocking wait had just taken goes back to its queue.
    reliable_fetch: bool = True
    inflight_heartbeat: int = 30

    # Retry policy shared by every task (a task may narrow it).
    retry_max: int = 5
    retry_base_delay: float = 2.0
    retry_max_delay: float = 900.0  # 15 min covers Twitter's rate-limit window
    max_deliveries: int = 3  # a message whose worker died this often is dead-lettered, not rerun
    deadletter_retention_days: int = 14

    # Task arguments are ids and keys; anything bigger is a bug (bytes must go through storage).
    max_arg_bytes: int = 4096
    strict_args: bool = False  # tests turn this on: every published message is checked

    # Worker sizing; supervisord.conf reads these through `farm supervise`.
    cpu_concurrency: int = 0  # 0: one prefork process per core
    feed_concurrency: int = 64
    io_procs: int = 64
    io_threads: int = 32
    batch_concurrency: int = 64
    max_tasks_per_child: int = 1000
    # Seconds a worker's task events wait to share one PUBLISH with others (Flower and `farm top`
    # see them that much later; workers/event_batching.py). Larger: fewer round trips.
    event_flush_seconds: float = 0.1

    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "farm"
    flower_password: str = _secret()

    # Feeds: capped Redis lists of photo ids, newest first, sharded over FARM_FEED_SHARDS.
    feed_shards: tuple[str, ...] = ()  # Redis URLs; empty: the data Redis alone
    feed_cap: int = 1000
    feed_chunk_size: int = 5000  # followers per fan-out chunk task
    # A chunk still listed this long after it was sent is sent again by the fanout-sweep job
    # (a worker killed as it took the message off the queue loses it: kombu #305).
    fanout_sweep_after: int = 600
    feed_active_days: float = 7.0  # followers seen this recently get the post first
    feed_backfill: int = 100  # a followee's newest posts merged into a new follower's feed
    # Owners with at least this many followers are not fanned out on write: their posts are
    # merged into their followers' feeds when read (tasks/feeds/celebrities.py). One who falls
    # below half of it is fanned out on write again.
    celebrity_followers: int = 1_000_000
    posts_cap: int = 1000  # a user's own posts kept for backfills and rebuilds
    activity_cap: int = 200
    # How long a fan-out chunk's done-marker and a deleted photo's tombstone guard a rerun:
    # longer than a dead letter can be replayed, so no message that can still run outlives them.
    marker_ttl: int = 15 * 86400

    # APNs: apps as "bundle_id|key_id|team_id|key_path[|environment]" entries (comma separated)
    # or the path of a JSON list; environment: production (default), sandbox or an https:// URL.
    apns_apps: str = ""
    apns_ca_file: str = ""  # CA bundle for a custom APNs endpoint (a test host)
    apns_timeout: float = 10.0  # seconds per push request
    # Age at which the farm's shared provider token is re-signed (each process +-5 min); Apple
    # refuses tokens older than an hour and throttles re-signing more often than every 20 min.
    apns_token_refresh: int = 2700
    # ExpiredProviderToken re-signs at once, unless the token is younger than this: then the
    # host's clock is off, a new token would fare no better, and signing again would earn
    # TooManyProviderTokenUpdates. 0 (tests) re-signs whatever the age.
    apns_min_resign_age: int = 1200

    # Third-party tokens (X, Facebook, webhook secrets) are encrypted at rest with these Fernet
    # keys, newest first (MultiFernet: the first encrypts, every one decrypts; README, "Rotating
    # the token key"). Empty: one key made on first use in FARM_STATE_DIR/token-keys (one machine).
    token_keys: str = _secret()
    # A photo's public page, linked from cross-posts and webhooks.
    photo_link: str = "https://photofarm.example/p/{photo_id}"

    # Cross-posting. X: the app's OAuth 1.0a consumer key and secret (users' tokens are linked
    # with `farm social link`). The API roots are settings so the demo and tests can point the
    # real libraries at local stand-ins.
    twitter_consumer_key: str = _secret()
    twitter_consumer_secret: str = _secret()
    twitter_api_url: str = "https://api.x.com"
    facebook_graph_url: str = "https://graph.facebook.com/"
    # facebook-sdk 3.1.0's constructor accepts only versions up to 3.1, long retired: the farm
    # sets this one on the instance (DESIGN, "Social").
    facebook_graph_version: str = "v24.0"
    social_timeout: float = 20.0  # seconds per HTTP request to X or Facebook
    # Farm-wide limits ("N/period", the `limits` package's notation), per network for the app and
    # per linked account, shared by every worker through the data Redis. X: 10,000 posts a day per
    # app, 100 per 15 minutes per user (X's v2 limits for POST /2/tweets). Facebook: the Page
    # limit scales with engagement; these stay well under the usual floor.
    twitter_app_limit: str = "10000/day"
    twitter_account_limit: str = "100/15minutes"
    facebook_app_limit: str = "600/hour"
    facebook_account_limit: str = "50/hour"

    # Real-time subscriber webhooks.
    webhook_timeout: float = 5.0  # seconds to connect, and for the whole answer
    webhook_max_response_bytes: int = 64 * 1024  # read no more of a subscriber's answer
    webhook_pause_after: int = 10  # failed deliveries in a row that pause a subscription
    webhook_concurrency: int = 8  # subscribers one deliver task sends to at once
    webhook_log_days: float = 7.0  # how far back `farm webhooks replay` can reach
    webhook_rate_limit: str = "50/second"  # per subscription, farm-wide
    # Networks a callback may resolve to although private, loopback or link-local (tests, a
    # demo receiver on this machine); empty: only public addresses (the SSRF guard).
    webhook_allow_networks: tuple[str, ...] = ()

    # Seeing the farm. Prometheus: one scrape endpoint per worker node (`farm metrics`, run by
    # `farm supervise`), fed by every worker process through prometheus-client's multiprocess
    # files in FARM_STATE_DIR/metrics; loopback unless told otherwise, basic auth when a password
    # is set (required off loopback). Port 0: no endpoint, no metrics files.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9808
    metrics_user: str = "farm"
    metrics_password: str = _secret()
    # Sentry: errors reported when a DSN is set, with tokens, keys and message bodies scrubbed.
    sentry_dsn: str = _secret()
    sentry_environment: str = "production"
    # The demo web tier (`farm web`), loopback only.
    web_address: str = "127.0.0.1"
    web_port: int = 8808

    extra_imports: tuple[str, ...] = ()  # further task modules, comma separated

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def result_backend(self) -> str:
        return self.result_url or self.redis_url

    @property
    def cpu_workers(self) -> int:
        return self.cpu_concurrency or os.cpu_count() or 1

    def key(self, *parts: object) -> str:
        """A data-Redis key under the configured prefix: key("deadletter", id)."""
        return ":".join((self.key_prefix, *map(str, parts)))


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise SettingsError(f"{PREFIX}{name.upper()}: {problem}")


# A host name as DNS spells it (underscores allowed: container names have them), or an address.
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                   r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.fullmatch(host))


def redact_url(url: str) -> str:
    """``url`` with its user and password (everything between :// and the last @) hidden,
    for messages: a Redis URL may carry the server's password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _url_problem(raw: str, schemes: tuple[str, ...]) -> str | None:
    """What is wrong with ``raw`` (scheme, host, port), parsed now so a typo stops start-up with
    one line instead of a traceback from the first library to connect; None if nothing."""
    url = redact_url(raw)
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unclosed [IPv6 bracket
        return f"is not a valid URL, got {url!r}"
    try:
        port = parts.port  # parsed lazily by urllib: a bad one raises only here
    except ValueError:
        port = 0
    if parts.scheme not in schemes:
        return f"must be a {' or '.join(s + '://' for s in schemes)} URL, got {url!r}"
    if parts.scheme == "unix":
        return None if parts.path else f"unix:// needs a socket path, got {url!r}"
    if port == 0:
        return f"the port must be a number from 1 to 65535, got {url!r}"
    if parts.hostname is None:
        # redis:// alone means localhost to redis-py and kombu; http needs a host
        return None if parts.scheme.startswith("redis") else f"needs a host, got {url!r}"
    if not _is_host(parts.hostname):
        return f"host {parts.hostname!r} is not a host name or address, got {url!r}"
    if parts.scheme.startswith("redis"):
        db = parts.path.strip("/")
        if db and not db.isdigit():
            return f"the database after the host must be a number, got {url!r}"
    return None


def _check_url(s: Settings, name: str, schemes: tuple[str, ...], url: str | None = None) -> None:
    problem = _url_problem(getattr(s, name) if url is None else url, schemes)
    _check(problem is None, name, problem or "")


def _validate(s: Settings) -> None:
    # kombu has no unix:// transport: the broker is Redis over TCP (or TLS), or RabbitMQ
    # (amqp://user:password@host:port/vhost, amqps:// for TLS; config/rabbitmq.py).
    _check_url(s, "broker_url", ("redis", "rediss", "amqp", "amqps"))
    _check_url(s, "redis_url", ("redis", "rediss", "unix"))
    if s.result_url:
        _check_url(s, "result_url", ("redis", "rediss", "unix"))
    _validate_sentinel(s)
    scheme, sep, rest = s.storage_url.partition("://")  # not urlsplit: "[" raises in it
    _check(scheme in ("s3", "file") and bool(sep), "storage_url",
           f"must be s3://bucket/prefix or file:///path, got {s.storage_url!r}")
    _check(bool(s.key_prefix) and ":" not in s.key_prefix, "key_prefix",
           "must be non-empty and contain no ':'")
    _check(s.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
           "log_level", f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {s.log_level!r}")
    _check(s.inflight_heartbeat >= 5, "inflight_heartbeat",
           "must be at least 5 seconds (a consumer refreshes it every second or so)")
    for name in ("task_time_limit", "visibility_timeout", "restore_interval", "max_arg_bytes",
                 "max_deliveries", "s3_multipart_mb", "photo_full_size", "max_pixels",
                 "max_upload_mb", "feed_cap", "feed_chunk_size", "feed_backfill", "posts_cap",
                 "activity_cap", "marker_ttl", "fanout_sweep_after", "celebrity_followers",
                 "feed_concurrency", "io_procs", "io_threads", "batch_concurrency",
                 "max_tasks_per_child", "flower_port", "deadletter_retention_days"):
        _check(getattr(s, name) > 0, name, f"must be positive, got {getattr(s, name)}")
    for name in ("retry_max", "cpu_concurrency", "task_soft_time_limit"):
        _check(getattr(s, name) >= 0, name, f"must not be negative, got {getattr(s, name)}")
    _check(s.marker_ttl > s.deadletter_retention_days * 86400, "marker_ttl",
           f"must exceed FARM_DEADLETTER_RETENTION_DAYS ({s.deadletter_retention_days} days): a "
           "replayed dead letter must still find its markers and tombstones")
    _check(s.retry_base_delay > 0, "retry_base_delay", "must be positive")
    _check(s.retry_max_delay >= s.retry_base_delay, "retry_max_delay",
           "must be at least FARM_RETRY_BASE_DELAY")
    _check(1 <= s.jpeg_quality <= 95, "jpeg_quality", "must be between 1 and 95")
    _check(bool(s.photo_squares) and all(n > 0 for n in s.photo_squares), "photo_squares",
           "must be a comma-separated list of positive sizes")
    _check(list(s.photo_squares) == sorted(s.photo_squares, reverse=True), "photo_squares",
           "must be listed largest first")
    _check(s.feed_active_days > 0, "feed_active_days", "must be positive")
    _check(0 < s.event_flush_seconds <= 60, "event_flush_seconds",
           "must be more than 0 and at most 60 seconds")
    _check(s.apns_timeout > 0, "apns_timeout", "must be positive")
    _check(1500 <= s.apns_token_refresh <= 3000, "apns_token_refresh",
           "must be between 1500 and 3000 seconds (Apple: re-sign every 20-60 minutes)")
    _check(0 <= s.apns_min_resign_age <= 1200, "apns_min_resign_age",
           "must be between 0 and 1200 seconds (Apple: re-sign at most every 20 minutes)")
    for name in ("social_timeout", "webhook_timeout", "webhook_max_response_bytes",
                 "webhook_pause_after", "webhook_concurrency", "webhook_log_days"):
        _check(getattr(s, name) > 0, name, f"must be positive, got {getattr(s, name)}")
    for name in ("twitter_app_limit", "twitter_account_limit", "facebook_app_limit",
                 "facebook_account_limit", "webhook_rate_limit"):
        _check(_is_limit(getattr(s, name)), name,
               f"must be a limit like 100/15minutes or 10/second, got {getattr(s, name)!r}")
    for name in ("twitter_api_url", "facebook_graph_url", "photo_link"):
        _check_url(s, name, ("http", "https"))
    for name in ("s3_endpoint_url", "cdn_url"):
        if getattr(s, name):
            _check_url(s, name, ("http", "https"))
    # "" binds every interface; anything else must be something a socket can bind
    _check(s.flower_address == "" or _is_host(s.flower_address), "flower_address",
           f"must be an IP address or host name, got {s.flower_address!r}")
    _check(bool(re.fullmatch(r"v\d+\.\d+", s.facebook_graph_version)), "facebook_graph_version",
           f"must look like v24.0, got {s.facebook_graph_version!r}")
    _check("{photo_id}" in s.photo_link, "photo_link", "must contain {photo_id}")
    for net in s.webhook_allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            _check(False, "webhook_allow_networks",
                   f"must be comma-separated networks like 127.0.0.0/8, got {net!r}")
    for url in s.feed_shards:
        _check_url(s, "feed_shards", ("redis", "rediss", "unix"), url)
    _check(len(set(s.feed_shards)) == len(s.feed_shards), "feed_shards",
           "lists a shard twice")
    if s.storage_url.startswith("s3://"):
        bucket = rest.partition("/")[0]
        _check(bool(bucket), "storage_url", "s3:// needs a bucket name")
        # botocore's own rule (legacy names included); it would refuse only at the first put
        _check(bool(re.fullmatch(r"[A-Za-z0-9._-]{1,255}", bucket)), "storage_url",
               f"{bucket!r} is not an S3 bucket name")
    _check(s.flower_port < 65536, "flower_port", "must be a TCP port (1-65535)")
    _check(s.task_soft_time_limit < s.task_time_limit, "task_soft_time_limit",
           f"must be below FARM_TASK_TIME_LIMIT ({s.task_time_limit})")
    # kombu #337: a message held past the visibility timeout is delivered again, so the timeout
    # must cover the longest run plus the longest countdown a retry may ask for.
    floor = s.task_time_limit + s.retry_max_delay
    _check(s.visibility_timeout > floor, "visibility_timeout",
           f"must exceed FARM_TASK_TIME_LIMIT + FARM_RETRY_MAX_DELAY ({floor:g}s), "
           f"got {s.visibility_timeout}")


_MASTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def sentinel_address(entry: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) as (host, port); None if it is not one."""
    try:
        parts = urlsplit(f"//{entry}")
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or not port or not _is_host(host) or parts.username or parts.path:
        return None
    return host, port


def _validate_sentinel(s: Settings) -> None:
    for entry in s.sentinels:
        _check(sentinel_address(entry) is not None, "sentinels",
               f"must be comma-separated host:port addresses, got {entry!r}")
    _check(len(set(s.sentinels)) == len(s.sentinels), "sentinels", "lists a sentinel twice")
    _check(not s.sentinels or bool(s.broker_master or s.redis_master), "sentinels",
           "name the master(s) they watch with FARM_BROKER_MASTER and/or FARM_REDIS_MASTER")
    for name, url_name in (("broker_master", "broker_url"), ("redis_master", "redis_url")):
        master, url = getattr(s, name), getattr(s, url_name)
        if not master:
            continue
        _check(bool(s.sentinels), name, "needs FARM_SENTINELS, the sentinels that know it")
        _check(bool(_MASTER_NAME.fullmatch(master)), name,
               f"must be 1-64 letters, digits, '.', '_' or '-', got {master!r}")
        parts = urlsplit(url)
        _check(not parts.scheme.startswith("amqp"), name,
               "the broker is RabbitMQ (FARM_BROKER_URL); Sentinel is for a Redis broker")
        _check(parts.scheme == "redis", url_name,
               f"with {PREFIX}{name.upper()} set it must be a redis:// URL (TLS to a server found "
               f"through Sentinel is not supported), got {redact_url(url)!r}")
        _check(not parts.hostname and parts.port is None, url_name,
               f"with {PREFIX}{name.upper()} set the sentinels name the server: give no host or "
               f"port, e.g. redis://:PASSWORD@/0, got {redact_url(url)!r}")
    _check(s.broker_url != s.redis_url or s.broker_master == s.redis_master, "redis_master",
           "FARM_BROKER_URL and FARM_REDIS_URL are the same URL but name different masters")


_LIMIT = re.compile(r"\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day|month|year)s?\s*",
                    re.IGNORECASE)


def _is_limit(text: str) -> bool:
    """One rate in the `limits` package's notation (checked here; config imports no library)."""
    return bool(_LIMIT.fullmatch(text))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(name: str, raw: str, kind: Any) -> Any:
    env = f"{PREFIX}{name.upper()}"
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        if kind == tuple[str, ...]:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if kind == tuple[int, ...]:
            return tuple(int(p) for p in raw.split(",") if p.strip())
        return raw
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number",
                tuple[int, ...]: "a comma-separated list of integers"}[kind]
        raise SettingsError(f"{env}: must be {what}, got {raw!r}") from None


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments and blank lines skipped, optional quotes removed."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise SettingsError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    """Build Settings from the environment; the environment wins over .env."""
    env = dict(os.environ if environ is None else environ)
    dotenv = dotenv if dotenv is not None else Path(env.get("FARM_ENV_FILE", ".env"))
    if dotenv.is_file():
        env = {**read_dotenv(dotenv), **env}
    known = {f"{PREFIX}{f.name.upper()}" for f in fields(Settings)}
    known |= {f"{PREFIX}{f.name.upper()}_FILE" for f in fields(Settings)
              if f.metadata.get("secret")}
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known
                     and k != "FARM_ENV_FILE")
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown setting (see .env.example)")
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env_name = f"{PREFIX}{f.name.upper()}"
        if f.metadata.get("secret") and f"{env_name}_FILE" in env:
            secret_path = Path(env[f"{env_name}_FILE"])
            try:
                values[f.name] = secret_path.read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{env_name}_FILE: cannot read {secret_path}: "
                                    f"{exc.strerror}") from None
        elif env_name in env:
            values[f.name] = _parse(f.name, env[env_name], hints[f.name])
    return Settings(**values)


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def as_environ(s: Settings) -> dict[str, str]:
    """The settings as FARM_* variables (secrets left out), for child processes."""
    out = {}
    for f in fields(s):
        if f.metadata.get("secret"):
            continue
        value = getattr(s, f.name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = "1" if value else "0"
        out[f"{PREFIX}{f.name.upper()}"] = str(value)
    return out


def replace(s: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(s, **changes)
