"""Signed webhook deliveries per second from one process, beside plain unsigned POSTs.
Long because the signed path, the plain baseline and their receiver run in one alternating loop.

    python -m bench.webhooks [--rounds R] [--seconds S]      (or: farm bench webhooks)

Three figures from one run, in alternating rounds of S seconds each (so a drift in machine speed
hits all of them), medians compared:

1. plain: a loop of unsigned POSTs over one keep-alive http.client connection, the same body
   size, to the same receiver: what one Python process does with no farm at all;
2. deliver(), one subscriber a photo: tasks.webhooks.delivery.deliver, the task's whole work
   (match the owner's subscriptions, log the event, check the delivered-marker, the farm-wide
   rate limit, unseal the secret, sign, POST through the SSRF guard, write the marker),
   one photo after another;
3. deliver(), FARM_WEBHOOK_CONCURRENCY subscribers a photo: the same, sent to concurrently.

Starts everything it needs, with no configuration: an embedded Redis (workers.embedded_redis) for
the data Redis, and a receiver in a separate, spawned process (so it does not share this
process's GIL): a minimal asyncio HTTP/1.1 keep-alive server that answers the subscription
challenge and checks every signature (HMAC-SHA256 by hand, the Standard Webhooks scheme). The
rate limit is raised to 100,000/s per subscription so it is counted but never refuses.

Every delivery must come back 2xx and verify at the receiver, or the run fails (exit 1) and
nothing is reported. The last line holds the signed and plain rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import parse_qs, urlsplit

OWNER_ONE, OWNER_MANY = 1, 2  # users with one subscriber, and with FARM_WEBHOOK_CONCURRENCY
STARTUP_TIMEOUT = 30.0
ROUND_TRIPS = 4  # data Redis, per delivery: match.lua, RateLimits.acquire (2), the marker
RATE_LIMIT = "100000/second"  # counted through Redis like the real one, never refusing
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class BenchFailure(Exception):
    """The run cannot give a figure; the message says why."""


# -- the receiver, in its own process --------------------------------------------------------------

class _Tally:
    def __init__(self) -> None:
        self.plain = self.verified = self.bad = self.challenges = self.connections = 0
        self.keys: dict[str, bytes] = {}  # path -> the secret's key bytes


class _Hook(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough: a request's head, its Content-Length body, 200."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.tally.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            method, target = lines[0].split(" ")[:2]
            assert self.transport is not None
            self.transport.write(self.answer(method, target, headers, body))

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        tally = self.tally
        if method == "GET":
            challenge = parse_qs(urlsplit(target).query).get("hub.challenge", [""])[0].encode()
            tally.challenges += 1
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(challenge),
                                                                        challenge)
        signature = headers.get("webhook-signature")
        if signature is None:
            tally.plain += 1
            return OK
        key = tally.keys.get(urlsplit(target).path, b"")
        signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode()
        expected = base64.b64encode(hmac.new(key, signed + body, hashlib.sha256).digest())
        if key and hmac.compare_digest(signature.encode(), b"v1," + expected):
            tally.verified += 1
        else:
            tally.bad += 1
        return OK


def serve_receiver(conn: Connection) -> None:
    """Runs in the spawned child: the server in a thread of its own, the parent's commands
    ("keys", "tally", "stop") on this one."""
    tally = _Tally()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: _Hook(tally), "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    conn.send(("ready", {"pid": os.getpid(), "port": port}))
    while True:
        try:
            command, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command == "keys":
            tally.keys = {path: base64.b64decode(secret.removeprefix("whsec_"))
                          for path, secret in arg.items()}
            conn.send("ok")
        elif command == "tally":
            conn.send({"plain": tally.plain, "verified": tally.verified, "bad": tally.bad,
                       "challenges": tally.challenges, "connections": tally.connections,
                       "cpu": time.process_time()})
        else:
            break
    loop.call_soon_threadsafe(loop.stop)


class Receiver:
    """The parent's handle on the receiver's process."""

    def __init__(self) -> None:
        # The child is handed the function by its module's name: this module's own when run as
        # __main__ (python -m, or `farm bench` through runpy) is not one a child can import.
        from bench import webhooks as importable

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=importable.serve_receiver, args=(child,),
                                   name="webhook-receiver", daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.close()
            raise BenchFailure(f"the receiver's process did not start in {STARTUP_TIMEOUT:g}s")
        try:
            kind, info = self.conn.recv()
        except EOFError:
            kind, info = "error", f"its process exited with code {self.process.exitcode}"
        if kind != "ready" or info["pid"] == os.getpid():
            self.close()
            raise BenchFailure(f"the receiver did not start in a process of its own: {info}")
        self.pid, self.port = int(info["pid"]), int(info["port"])
        self.last = self.tally()

    def ask(self, command: str, arg: Any = None) -> Any:
        self.conn.send((command, arg))
        if not self.conn.poll(30):
            raise BenchFailure("the receiver stopped answering")
        return self.conn.recv()

    def tally(self) -> dict[str, float]:
        return dict(self.ask("tally"))

    def since_last(self) -> dict[str, float]:
        """What arrived since the last call (and the receiver's CPU seconds meanwhile)."""
        now = self.tally()
        delta = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return delta

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


# -- the measuring side ---------------------------------------------------------------------------

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


def timed(seconds: float, step: Callable[[], int]) -> tuple[int, float, float]:
    """Run ``step`` (it returns how many it sent) for about ``seconds``: (sent, wall s, CPU s)."""
    sent = 0
    cpu, start = time.process_time(), time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        sent += step()
    return sent, time.perf_counter() - start, time.process_time() - cpu


def run(opts: argparse.Namespace) -> None:
    from tasks.core.sealed import new_key
    from workers.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="farm-bench-webhooks-") as scratch, \
            EmbeddedRedis() as server:
        receiver = Receiver()
        try:
            with farm_env({"FARM_BROKER_URL": server.url(0), "FARM_REDIS_URL": server.url(1),
                           "FARM_ENV_FILE": os.devnull, "FARM_STATE_DIR": scratch,
                           "FARM_TOKEN_KEYS": new_key(),
                           "FARM_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                           "FARM_WEBHOOK_RATE_LIMIT": RATE_LIMIT}):
                measure(opts, receiver)
        finally:
            receiver.close()


def measure(opts: argparse.Namespace, receiver: Receiver) -> None:
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.webhooks import delivery, guard, signing
    from tasks.webhooks.subscriptions import Subscriptions

    s = get_settings()
    r = data_redis()
    subs = Subscriptions(r, s)
    fan = s.webhook_concurrency
    secrets = {}
    base = f"http://127.0.0.1:{receiver.port}"
    for owner, count in ((OWNER_ONE, 1), (OWNER_MANY, fan)):
        for i in range(count):
            path = f"/u{owner}/s{i}"
            _, secrets[path] = subs.add("user", owner, base + path)  # the challenge, verified
    receiver.ask("keys", secrets)
    photos = iter(range(2_900_000_000_000_000_000, 2**63))
    sample = signing.body(signing.Event(1, "user", str(OWNER_MANY), next(photos), OWNER_MANY,
                                        time.time()), s).encode()

    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=s.webhook_timeout)
    plain_headers = {"Content-Type": "application/json", "User-Agent": guard.USER_AGENT}

    def plain() -> int:
        conn.request("POST", "/plain", body=sample, headers=plain_headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise BenchFailure(f"plain POST answered {answer.status}")
        return 1

    def deliver(owner: int, expected: int) -> Callable[[], int]:
        def step() -> int:
            out = delivery.deliver(next(photos), owner, "")
            if out.sent != expected:
                raise BenchFailure(f"deliver sent {out.sent} of {expected}")
            return out.sent
        return step

    phases = {"plain": plain, "one": deliver(OWNER_ONE, 1), "many": deliver(OWNER_MANY, fan)}
    print(f"receiver: pid {receiver.pid} (bench: pid {os.getpid()}), asyncio HTTP/1.1 "
          f"keep-alive on 127.0.0.1:{receiver.port}; data Redis: valkey "
          f"{r.info('server').get('valkey_version', '?')} (embedded); {os.cpu_count()} cores; "
          f"body {len(sample)} bytes", flush=True)
    for step in phases.values():  # warm-up: connections opened, scripts loaded, both paths run
        for _ in range(20):
            step()
    receiver.since_last()

    rates: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}  # this process, us a request
    receiver_cpu: dict[str, list[float]] = {name: [] for name in phases}
    checked = 0
    for _ in range(opts.rounds):
        for name, step in phases.items():
            sent, wall, used = timed(opts.seconds, step)
            seen = receiver.since_last()
            arrived = seen["plain"] if name == "plain" else seen["verified"]
            if seen["bad"] or arrived != sent:
                raise BenchFailure(f"{name}: {sent} sent, {arrived:.0f} arrived, "
                                   f"{seen['bad']:.0f} failed verification")
            checked += sent if name != "plain" else 0
            rates[name].append(sent / wall)
            cpu[name].append(used / sent * 1e6)
            receiver_cpu[name].append(seen["cpu"] / sent * 1e6)
    conn.close()

    def median(values: list[float]) -> float:
        return statistics.median(values)

    labels = {"plain": "plain POST loop (http.client keep-alive, unsigned)",
              "one": "deliver(), 1 subscriber a photo",
              "many": f"deliver(), {fan} subscribers a photo ({fan} threads)"}
    for name, label in labels.items():
        print(f"{label:<52} median {median(rates[name]):>8,.0f}/s  (min "
              f"{min(rates[name]):,.0f}, max {max(rates[name]):,.0f}; CPU "
              f"{median(cpu[name]):,.0f} us here, {median(receiver_cpu[name]):,.0f} us in the "
              f"receiver per request)")
    pings = []
    for _ in range(500):
        start = time.perf_counter()
        r.ping()
        pings.append(time.perf_counter() - start)
    print(f"per delivery: {ROUND_TRIPS} data-Redis round trips (match and log, the rate limit's "
          f"two, the marker) and the POST; one PING round trip here: "
          f"{median(pings) * 1e6:,.0f} us, one plain POST: {1e6 / median(rates['plain']):,.0f} us")
    print(f"checked: all {checked:,} measured deliveries answered 2xx and verified by the "
          f"receiver (Standard Webhooks HMAC-SHA256); {opts.rounds} rounds of "
          f"{opts.seconds:g} s each; rate limit {RATE_LIMIT} per subscription (counted); "
          f"connections pooled: {guard.pool().idle()} idle at the end")
    many, one, base_rate = median(rates["many"]), median(rates["one"]), median(rates["plain"])
    print(f"webhooks: signed deliveries {many:,.0f}/s ({fan} subscribers a photo; {one:,.0f}/s "
          f"one at a time), plain unsigned POSTs {base_rate:,.0f}/s, ratio "
          f"{many / base_rate:.2f} ({one / base_rate:.2f} one at a time)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each figure")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds each round runs")
    opts = parser.parse_args(argv)
    if opts.rounds < 1 or opts.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    try:
        run(opts)
    except BenchFailure as exc:
        print(f"webhooks benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
