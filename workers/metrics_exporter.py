"""What `farm metrics` serves: the sum of the node's worker processes' metrics files, and the
queues read from the broker at scrape time (once per scrape here, not by every worker).

Queue depth is the Redis list's length; the oldest message is the list's right end (kombu
consumes from there) and its age comes from the send stamp every farm publish carries
(``farm_sent``, config/celery_app.py). A broker that does not answer makes ``farm_broker_up`` 0
and leaves the queue series out, so the scrape itself still succeeds.

Each worker process writes its own pair of files (counter_<pid>.db, histogram_<pid>.db), and a
prefork pool recycles its children every FARM_MAX_TASKS_PER_CHILD tasks: left alone, a busy node
would pile up files by the thousand and every scrape would read them all. So before each scrape
the files of processes that are gone are folded into one archive per type (their sums kept:
counters and histogram buckets add up) and removed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from config.queues import QUEUES
from config.rabbitmq import is_amqp
from config.rabbitmq import queue_depths as amqp_queue_depths
from config.sentinel import redis_from_url
from config.settings import Settings
from tasks.core.deadletter import DeadLetterStore
from tasks.core.redis import data_redis

log = logging.getLogger("farm.metrics")

BROKER_TIMEOUT = 2.0  # seconds; Prometheus' default scrape timeout is 10


def oldest_age(raw: bytes | None, now: float) -> float:
    """Seconds since the oldest waiting message was sent; 0 for none, or one without a stamp."""
    if raw is None:
        return 0.0
    try:
        sent = json.loads(raw)["headers"]["farm_sent"]
    except (ValueError, KeyError, TypeError):
        return 0.0
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        return 0.0
    return max(0.0, now - float(sent))


class BrokerCollector(Collector):
    """Per queue, depth and oldest age; the dead letters stored; whether the broker answered."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.broker = None if is_amqp(s.broker_url) else redis_from_url(
            s.broker_url, s, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=BROKER_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("farm_broker_up", "1 when the broker answered this scrape")
        try:
            depths, ages = self._read_amqp() if self.broker is None else self._read_redis()
        except Exception as exc:  # the scrape goes on: the broker is down, and it says so
            log.warning("metrics: broker unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("farm_queue_depth", "Messages waiting in the queue",
                                  labels=["queue"])
        for q, n in depths.items():
            depth.add_metric([q], float(n))
        yield depth
        if ages is not None:
            age = GaugeMetricFamily("farm_queue_oldest_age_seconds", "Age of the oldest "
                                    "waiting message (0 when the queue is empty)",
                                    labels=["queue"])
            for q, seconds in ages.items():
                age.add_metric([q], seconds)
            yield age
        yield from self._deadletters()

    def _read_redis(self) -> tuple[dict[str, int], dict[str, float] | None]:
        """Depths and the oldest message's age per queue, in one pipeline."""
        assert self.broker is not None
        pipe = self.broker.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
            pipe.lindex(q, -1)
        answers: list[Any] = pipe.execute()
        now = time.time()
        return ({q: int(answers[2 * i]) for i, q in enumerate(QUEUES)},
                {q: oldest_age(answers[2 * i + 1], now) for i, q in enumerate(QUEUES)})

    def _read_amqp(self) -> tuple[dict[str, int], dict[str, float] | None]:
        """RabbitMQ: depths by passive declares; no oldest age (it would mean taking the message
        off the queue to read its send stamp)."""
        return amqp_queue_depths(self.s.broker_url, QUEUES, timeout=BROKER_TIMEOUT), None

    def _deadletters(self) -> Iterator[Metric]:
        try:
            stored = DeadLetterStore(data_redis(), self.s).count()
        except redis.RedisError as exc:
            log.warning("metrics: dead letters unreadable: %s", exc)
            return
        dead = GaugeMetricFamily("farm_deadletters", "Dead letters stored, waiting for an "
                                 "operator")
        dead.add_metric([], float(stored))
        yield dead


ARCHIVE = "archive"  # counter_archive.db, histogram_archive.db: the sums of processes gone
FOLDED_TYPES = ("counter", "histogram")  # the farm's workers write no gauges


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def compact(path: Path) -> int:
    """Fold the files of this node's processes that are gone into the archive files; returns
    how many were folded. A crash between the archive write and the unlink counts those
    processes twice once; nothing is ever lost."""
    gone: dict[str, list[Path]] = {}
    for f in path.glob("*.db"):
        kind, _, pid = f.stem.partition("_")
        if kind in FOLDED_TYPES and pid.isdigit() and not _alive(int(pid)):
            gone.setdefault(kind, []).append(f)
    for kind, files in gone.items():
        archive = MmapedDict(str(path / f"{kind}_{ARCHIVE}.db"))  # type: ignore[no-untyped-call]
        try:
            for f in files:
                for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(f)):  # type: ignore[no-untyped-call]
                    kept, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
                    archive.write_value(key, kept + value, stamp)  # type: ignore[no-untyped-call]
        finally:
            archive.close()  # type: ignore[no-untyped-call]
        for f in files:
            f.unlink(missing_ok=True)
    return sum(map(len, gone.values()))


class NodeFilesCollector(Collector):
    """prometheus-client's multiprocess collector over the node's files, compacted first; one
    scrape at a time, so none reads a file while it is being folded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = multiprocess.MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            compact(self.path)
            families: list[Metric] = list(self.files.collect())  # type: ignore[no-untyped-call]
        return iter(families)


def build_registry(s: Settings, path: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(NodeFilesCollector(path))
    registry.register(BrokerCollector(s))
    return registry


def credentials_ok(header: str | None, user: str, password: str) -> bool:
    """An ``Authorization: Basic`` header naming ``user`` and ``password`` (constant time)."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{user}:{password}".encode())


def make_server(s: Settings, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """The scrape endpoint on FARM_METRICS_ADDRESS:FARM_METRICS_PORT: /metrics, behind basic
    auth when FARM_METRICS_PASSWORD is set."""
    user, password = s.metrics_user, s.metrics_password

    class Handler(BaseHTTPRequestHandler):
        server_version = "farm-metrics"

        def do_GET(self) -> None:
            if password and not credentials_ok(self.headers.get("Authorization"), user,
                                               password):
                self._send(401, b"authentication required\n", "text/plain",
                           {"WWW-Authenticate": 'Basic realm="farm metrics"'})
            elif self.path.split("?", 1)[0] == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/":
                self._send(200, b"farm metrics: see /metrics\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, kind: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every 15 s is not worth a log line

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in s.metrics_address else socket.AF_INET

    return Server((s.metrics_address, s.metrics_port), Handler)
