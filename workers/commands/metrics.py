"""`farm metrics`: this node's Prometheus scrape endpoint (`farm supervise` runs it).

Serves http://FARM_METRICS_ADDRESS:FARM_METRICS_PORT/metrics: every worker process's counters
and histograms (summed from their files in FARM_STATE_DIR/metrics) and the queues as the broker
holds them at scrape time. Loopback by default; basic auth (FARM_METRICS_USER /
FARM_METRICS_PASSWORD or FARM_METRICS_PASSWORD_FILE) when a password is set, which is required
off loopback, Flower's rule. FARM_METRICS_PORT=0: off.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from config.settings import Settings, SettingsError, get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("metrics", help="serve this node's Prometheus metrics",
                       description="Binds FARM_METRICS_ADDRESS:FARM_METRICS_PORT (/metrics), "
                                   "basic auth FARM_METRICS_USER / FARM_METRICS_PASSWORD when a "
                                   "password is set; FARM_METRICS_PORT=0 turns it off.")
    p.set_defaults(handler=run)


def check_exposure(s: Settings) -> None:
    """Task names, queue depths and error rates leave loopback only behind a password."""
    from workers.commands.flower import is_loopback

    if s.metrics_port and not is_loopback(s.metrics_address) and not s.metrics_password:
        raise SettingsError(f"FARM_METRICS_ADDRESS: {s.metrics_address!r} is not a loopback "
                            "address; set FARM_METRICS_PASSWORD or FARM_METRICS_PASSWORD_FILE "
                            "first")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    s = get_settings()
    if s.metrics_port == 0:
        print("farm metrics: off (FARM_METRICS_PORT=0)", file=sys.stderr)
        return 0
    check_exposure(s)
    from workers.metrics import metrics_dir
    from workers.metrics_exporter import build_registry, make_server

    path = metrics_dir(s.state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        server = make_server(s, build_registry(s, path))
    except OSError as exc:
        raise SettingsError(f"FARM_METRICS_PORT: cannot listen on {s.metrics_address}:"
                            f"{s.metrics_port}: {exc.strerror or exc}") from None
    signal.signal(signal.SIGTERM, _stop)
    auth = f"basic auth as {s.metrics_user!r}" if s.metrics_password else "no auth (loopback)"
    print(f"farm metrics: serving http://{s.metrics_address}:{s.metrics_port}/metrics, {auth}, "
          f"files in {path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
