"""Push throughput of one worker process: many HTTP/2 streams in flight beside one at a time.

    python -m bench.push [--batch N] [--rounds R] [--single N]      (or: farm bench push)

Notifications per second from this one process to a local APNs stand-in through the farm's own
adapter (tasks.push.apns.client, public API only): ``send_many`` with a batch of N requests in
flight at once, beside ``send`` one request at a time, same process, same connection, same run.
Rounds alternate the two so a drift in machine speed hits both; the medians are compared. Goal:
>= 10,000 notifications/s from one process.

Starts everything it needs, with no configuration: an embedded Redis (the provider token lives
there, as in the farm), and the stand-in from tests/support/apns_standin.py in a separate, spawned
process, so it does not share this process's GIL with the client being measured. The app is
configured as the farm does it (FARM_APNS_APPS, FARM_APNS_CA_FILE) with a throwaway provider key.
A dev tool: the stand-in needs the repo checkout and the dev dependencies (trustme, pytest:
``pip install -e '.[dev]'``).

Every notification must come back 200 and reach the stand-in, or the run fails (exit 1) and
nothing is reported. Besides the rates it prints the CPU time each side spends per notification in
the many-streams rounds, which tells whether the client or the stand-in is the limit, and the
duplicate window of push.notify at that speed: per batch of answers, the time from the batch's
first 200 being complete in this process to its sent-markers acknowledged by Redis (a worker
killed inside it leaves those devices to be pushed again by the redelivery). The last line holds
both rates and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.push_standin import BenchFailure, Standin

if TYPE_CHECKING:
    from tasks.push.apns.client import PushRequest, PushResult

WARMUP = 500  # notifications in the warm-up batch (fewer if --batch is smaller)


# -- the client's side ---------------------------------------------------------------------------

@contextlib.contextmanager
def farm_env(values: dict[str, str]) -> Iterator[None]:
    """Only these FARM_* variables while inside (no .env file), as they were after."""
    from config.settings import get_settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("FARM_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[name]
        os.environ.update(saved)
        get_settings.cache_clear()


class Requests:
    """Distinct 64-hex device tokens and a realistic ~100-byte alert for each request."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(24)  # 48 hex digits; a counter makes the other 16
        self.made = 0

    def make(self, count: int) -> list[PushRequest]:
        from tasks.push.apns.client import PushRequest

        first, self.made = self.made, self.made + count
        return [PushRequest(f"{self.prefix}{i:016x}", payload(i)) for i in range(first,
                                                                                 first + count)]


def payload(i: int) -> bytes:
    return json.dumps({"aps": {"alert": {"title": "ana_k", "body": "posted a new photo"},
                               "sound": "default"},
                       "photo_id": str(2_900_000_000_000_000_000 + i)},
                      separators=(",", ":")).encode()


def verified(phase: str, requests: Sequence[PushRequest], results: Sequence[PushResult]) -> None:
    """Every request got its own result, and every result is a 200."""
    if len(results) != len(requests):
        raise BenchFailure(f"{phase}: {len(results)} results for {len(requests)} requests")
    bad = [r for q, r in zip(requests, results, strict=True)
           if not r.ok or r.device_token != q.device_token]
    if bad:
        examples = "; ".join(f"{r.device_token[:12]}..: {r.status} {r.reason or r.error or ''}"
                             for r in bad[:3])
        raise BenchFailure(f"{phase}: {len(bad)} of {len(requests)} notifications failed "
                           f"(e.g. {examples}); failures are not throughput, no figure")


def run(opts: argparse.Namespace) -> None:
    from workers.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="farm-bench-push-") as scratch, \
            EmbeddedRedis() as server:
        standin = Standin(Path(scratch))
        try:
            info = standin.info
            app_spec = "|".join((info["topic"], info["key_id"], info["team_id"],
                                 info["key_path"], info["endpoint"]))
            with farm_env({"FARM_BROKER_URL": server.url(0), "FARM_REDIS_URL": server.url(1),
                           "FARM_ENV_FILE": os.devnull, "FARM_STATE_DIR": scratch,
                           "FARM_APNS_APPS": app_spec, "FARM_APNS_CA_FILE": info["ca_file"]}):
                measure(opts, standin)
        finally:
            standin.close()


def measure(opts: argparse.Namespace, standin: Standin) -> None:
    from tasks.push.apns import apps, client, token

    apps.reset()
    token.clear_cache()
    try:
        app = apps.get_app(standin.info["topic"])
        requests = Requests()
        print(f"stand-in: pid {standin.info['pid']} (client: pid {os.getpid()}), "
              f"{app.endpoint}, HTTP/2 over TLS; {os.cpu_count()} cores; payload "
              f"{len(payload(0))} bytes", flush=True)

        # Warm up: the connection opened, the provider token minted, both code paths run.
        reqs = requests.make(5)
        verified("warm-up", reqs, [client.send(app, r) for r in reqs])
        reqs = requests.make(min(WARMUP, opts.batch))
        verified("warm-up", reqs, client.send_many(app, reqs))
        standin.check("warm-up", 5 + len(reqs))
        standin.received = standin.connections = 0

        rates: dict[str, list[float]] = {"one": [], "many": []}
        cpu = {"client": 0.0, "standin": 0.0, "wall": 0.0, "sent": 0}
        for _ in range(opts.rounds):
            reqs = requests.make(opts.single)
            start = time.perf_counter()
            results = [client.send(app, r) for r in reqs]
            elapsed = time.perf_counter() - start
            verified("one at a time", reqs, results)
            standin.check("one at a time", len(reqs))
            rates["one"].append(len(reqs) / elapsed)

            reqs = requests.make(opts.batch)
            cpu_start, start = time.process_time(), time.perf_counter()
            results = client.send_many(app, reqs)
            elapsed = time.perf_counter() - start
            client_cpu = time.process_time() - cpu_start
            verified("many streams", reqs, results)
            cpu["standin"] += standin.check("many streams", len(reqs))
            cpu["client"] += client_cpu
            cpu["wall"] += elapsed
            cpu["sent"] += len(reqs)
            rates["many"].append(len(reqs) / elapsed)
        task_rate, windows = notify_rate(app.app_id, requests, standin, opts.batch)
    finally:
        client.close()
        apps.reset()
        token.clear_cache()

    many, one = statistics.median(rates["many"]), statistics.median(rates["one"])
    for label, key, size in (("one at a time", "one", opts.single),
                             ("many streams", "many", opts.batch)):
        values = rates[key]
        print(f"{label:<14} median {statistics.median(values):>9,.0f}/s  (min {min(values):,.0f}, "
              f"max {max(values):,.0f}, {opts.rounds} rounds of {size})")
    client_cores, standin_cores = cpu["client"] / cpu["wall"], cpu["standin"] / cpu["wall"]
    print(f"many streams CPU per notification: client {cpu['client'] / cpu['sent'] * 1e6:,.0f} us "
          f"({client_cores:.2f} of a core), stand-in {cpu['standin'] / cpu['sent'] * 1e6:,.0f} us "
          f"({standin_cores:.2f} of a core)")
    print(f"push.notify, the task's whole work (registry, sent-markers, counters, APNs): "
          f"{task_rate:,.0f}/s, {task_rate / many:.2f} of the adapter's many-streams rate")
    print(window_line(windows))
    print(f"checked: all {standin.received:,} measured notifications answered 200 and seen by "
          f"the stand-in; connections opened after warm-up: {standin.connections}")
    busiest, cores = max(("the client", client_cores), ("the stand-in", standin_cores),
                         key=lambda side: side[1])
    if cores >= 0.75:  # a process busy this much of the wall time is what holds the rate
        print(f"limit: {busiest} is {'' if cores >= 0.95 else 'nearly '}CPU-bound "
              f"({cores:.2f} of a core)")
    print(f"push: many streams {many:,.0f}/s, one at a time {one:,.0f}/s, ratio {many / one:.1f}x "
          f"(goal >= 10,000/s from one process)")


def notify_rate(app_id: str, requests: Requests, standin: Standin, devices: int
                ) -> tuple[float, list[tuple[float, int]]]:
    """Notifications/s through push.notify's plain function (no broker): the devices of
    devices/2 users, two each, looked up in the registry, sent, marked, counted; and its
    duplicate windows (per batch of answers: seconds from the batch's first 200 complete in this
    process to its sent-markers acknowledged by Redis, how many 200s)."""
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.push.devices import DeviceRegistry
    from tasks.push.send import notify

    registry = DeviceRegistry(data_redis(), get_settings())
    users = list(range(1, max(1, devices // 2) + 1))
    tokens = [r.device_token for r in requests.make(2 * len(users))]
    for n, token in enumerate(tokens):
        registry.register(users[n // 2], app_id, token)
    notify(users[:10], "warm-up", "bench-warm")
    standin.check("push.notify warm-up", 20)
    start = time.perf_counter()
    out = notify(users, "posted a new photo", "bench-notify")
    elapsed = time.perf_counter() - start
    standin.check("push.notify", len(tokens))
    if out.sent != len(tokens):
        raise BenchFailure(f"push.notify sent {out.sent} of {len(tokens)}")
    return len(tokens) / elapsed, out.windows


def window_line(windows: list[tuple[float, int]]) -> str:
    """The duplicate window, every 200 counted at its batch's window (its batch's longest)."""
    each = sorted(w for w, n in windows for _ in range(n))
    if not each:
        return "duplicate window: no 200s measured"
    return (f"duplicate window (200 complete in the worker -> its sent-marker acknowledged by "
            f"Redis), {len(each):,} pushes in {len(windows)} batches: median "
            f"{statistics.median(each) * 1000:.1f} ms, p99 {each[int(len(each) * 0.99)] * 1000:.1f}"
            f" ms, max {each[-1] * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=5000,
                        help="requests per send_many call in a many-streams round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each")
    parser.add_argument("--single", type=int, default=300,
                        help="requests sent one at a time in a baseline round")
    opts = parser.parse_args(argv)
    for name in ("batch", "rounds", "single"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        run(opts)
    except BenchFailure as exc:
        print(f"push benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
