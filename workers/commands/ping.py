"""`farm ping`: round-trip a diagnostic task through every queue and print each one's latency."""

from __future__ import annotations

import argparse
import sys
import time

from config.queues import QUEUES, check_queues


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ping", help="round-trip a task through every queue")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait in all")
    p.add_argument("--queues", help="comma-separated queues (default: all)")
    p.set_defaults(handler=run)


def ping_queues(queues: list[str], timeout: float) -> dict[str, float | None]:
    """queue -> round-trip seconds, or None if no worker answered in time."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from config.celery_app import app

    sent = {}
    for q in queues:
        # Expires: a ping nobody answered must not linger in the queue for a later worker.
        sent[q] = (time.time(), app.send_task("diag.ping", args=[time.time()], queue=q,
                                              expires=timeout, ignore_result=False))
    deadline = time.monotonic() + timeout
    out: dict[str, float | None] = {}
    for q, (t0, result) in sent.items():
        try:
            result.get(timeout=max(0.01, deadline - time.monotonic()), interval=0.02)
            out[q] = time.time() - t0
        except ResultTimeout:
            out[q] = None
            result.forget()
    return out


def run(args: argparse.Namespace) -> int:
    try:
        queues = check_queues(args.queues.split(",")) if args.queues else list(QUEUES)
    except ValueError as exc:
        print(f"farm ping: {exc}", file=sys.stderr)
        return 2
    results = ping_queues(queues, args.timeout)
    width = max(map(len, queues))
    for q, rtt in results.items():
        shown = f"{rtt * 1000:8.1f} ms" if rtt is not None else "  no answer"
        print(f"{q:<{width}}  {shown}")
    missing = [q for q, rtt in results.items() if rtt is None]
    if missing:
        print(f"farm ping: no worker answered on {', '.join(missing)} within {args.timeout:g}s")
        return 1
    return 0
