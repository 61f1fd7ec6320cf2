"""`farm top`: the farm at work, live: queues (waiting, in and out per second, oldest message),
workers (from their heartbeats), task outcomes, failure rate and dead letters, each second.

``--once`` prints one snapshot instead (rates over ``--interval`` seconds), ``--json`` for
scripts, ``--svg PATH`` as a picture. The data is workers/top_state.py's, the workers
workers/top_workers.py's, the screen workers/top_view.py's. Read-only: nothing is written to
either Redis (``farm stats`` is the command that adopts unparsable messages).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Iterator
from types import FrameType
from typing import Any

import redis
from kombu.exceptions import KombuError

from config.rabbitmq import is_amqp
from config.sentinel import redis_from_url
from config.settings import Settings, get_settings
from tasks.core.text import safe
from workers.top_state import Sample, Snapshot, sample, snapshot
from workers.top_workers import WorkerWatch

RATE_WINDOW = 5.0  # seconds of samples the live view's rates are averaged over
WAKEUP_WAIT = 5.0  # --once: seconds at most for the workers' first heartbeats
SVG_WIDTH = 100  # columns of the --svg picture
REDIS_TIMEOUT = 3.0  # seconds
FULL_BEAT_WAIT = 2.5  # --once: seconds after the wakeup to wait for every worker's counts


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="live view of queues, workers, failures (q to quit)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON")
    p.add_argument("--svg", metavar="PATH", help="with --once: also save the view as SVG")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between refreshes, and --once's rate window (default 1)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0.1 <= args.interval <= 60:
        print("farm top: --interval must be between 0.1 and 60 seconds", file=sys.stderr)
        return 2
    if (args.json or args.svg) and not args.once:
        print("farm top: --json and --svg go with --once", file=sys.stderr)
        return 2
    if not args.once and not (sys.stdout.isatty() and sys.stdin.isatty()):
        print("farm top: not a terminal; use `farm top --once` (--json for scripts)",
              file=sys.stderr)
        return 2
    s = get_settings()
    from config.celery_app import app

    # Own clients with timeouts: a server that stops answering must not freeze the screen.
    # RabbitMQ is read by passive declares on a connection of each sample's own.
    broker: redis.Redis | str = s.broker_url if is_amqp(s.broker_url) else redis_from_url(
        s.broker_url, s, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
    data = redis_from_url(s.redis_url, s, decode_responses=True,
                          socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
    watch = WorkerWatch(app).start()
    try:
        clients = (s, broker, data)
        return once(args, clients, watch) if args.once else live(args, clients, watch)
    finally:
        watch.stop()
        if not isinstance(broker, str):
            broker.close()
        data.close()


Clients = tuple[Settings, redis.Redis | str, redis.Redis]
# A server that is down or stops answering: Redis's errors, RabbitMQ's (kombu's), sockets'.
BROKER_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, KombuError, OSError)


def _sample(clients: Clients) -> Sample:
    s, broker, data = clients
    return sample(broker, data, s)


def once(args: argparse.Namespace, clients: Clients, watch: WorkerWatch) -> int:
    try:
        first = _sample(clients)
        # Meanwhile the workers answer the wakeup; give them a moment after it went out.
        time.sleep(args.interval)
        if watch.woken.wait(WAKEUP_WAIT):
            # Answers to the wakeup carry no counts; the next regular beat (2 s) does.
            time.sleep(max(0.0, watch.woken_at + 0.5 - time.time()))
            while not watch.counted() and time.time() < watch.woken_at + FULL_BEAT_WAIT:
                time.sleep(0.05)
        snap = snapshot(_sample(clients), first, watch.workers())
    except BROKER_ERRORS as exc:
        print(f"farm top: {safe(str(exc), 300)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snap, indent=2))
    if args.svg:
        try:
            save_svg(snap, args.svg)
        except OSError as exc:
            print(f"farm top: cannot write {safe(args.svg, 300)}: {exc.strerror}", file=sys.stderr)
            return 1
    if not args.json:
        from rich.console import Console

        from workers.top_view import render

        Console().print(render(snap))
    return 0


def save_svg(snap: Snapshot, path: str) -> None:
    """The view as rich draws it, as an SVG picture (the README's)."""
    from rich.console import Console

    from workers.top_view import render

    console = Console(record=True, width=SVG_WIDTH, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor")
    console.print(render(snap))
    console.save_svg(path, title="farm top")


class _Stop:
    """SIGINT, SIGTERM and SIGHUP leave as q does. The handler only writes a byte to a pipe the
    key wait also watches: an exception raised wherever the signal lands (inside redis-py or
    rich, holding a lock that closing then waits on for ever) could hang the exit."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # the pipe full: a stop is already asked for
            os.write(self.write_fd, b"x")

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@contextlib.contextmanager
def _keys() -> Iterator[_Stop]:
    """Single keys without Enter (cbreak), restored however we leave; the stop signals caught."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    stop = _Stop()
    handlers = {sig: signal.signal(sig, stop.handler)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setcbreak(fd)
        yield stop
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, old in handlers.items():
            signal.signal(sig, old)
        stop.close()


def _quit_pressed(timeout: float, stop: _Stop) -> bool:
    """Wait up to ``timeout`` seconds for a key or a stop signal; True if either asks to quit."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin, stop.read_fd], [], [], left)
        if stop.read_fd in ready:
            return True
        if not ready:
            return False
        key = os.read(sys.stdin.fileno(), 32)
        if not key or b"q" in key.lower():  # end of input counts as quit
            return True
    return False


def live(args: argparse.Namespace, clients: Clients, watch: WorkerWatch) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from workers.top_view import render

    console = Console()
    samples: deque[Sample] = deque()
    view: Any = Text("farm top: reading the farm...")
    try:
        with _keys() as stop, Live(view, console=console, screen=True,
                                   auto_refresh=False) as screen:
            while True:
                try:
                    cur = _sample(clients)
                    while samples and cur.mono - samples[0].mono > RATE_WINDOW + 0.01:
                        samples.popleft()
                    prev = samples[0] if samples else None
                    samples.append(cur)
                    view = render(snapshot(cur, prev, watch.workers()), footer=True)
                except BROKER_ERRORS as exc:  # keep the screen; say why it is stale
                    view = Text(f"farm top: Redis unreachable ({safe(str(exc), 200)}); "
                                "retrying each refresh. q: quit")
                screen.update(view, refresh=True)
                if _quit_pressed(args.interval, stop):
                    break
    except KeyboardInterrupt:  # a signal before its handler was in place
        pass
    return 0
