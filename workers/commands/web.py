"""`farm web`: the demo web tier (workers/web/), served on FARM_WEB_ADDRESS:FARM_WEB_PORT.

Loopback only. It needs the farm's Redis and blob store (the same FARM_* settings as the
workers) and workers to do the work; `farm demo --serve` runs it with the whole demo farm.
"""

from __future__ import annotations

import argparse
import signal
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="serve the demo web tier (upload, feeds, follows; loopback)",
                       description="Serves the demo web tier on FARM_WEB_ADDRESS:FARM_WEB_PORT "
                                   "(loopback only) until Ctrl-C or SIGTERM.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from config.settings import get_settings
    from workers.web.app import create_app
    from workers.web.serve import config

    s = get_settings()
    server = uvicorn.Server(config(create_app(s), s))
    print(f"farm web: serving http://{s.web_address}:{s.web_port}", file=sys.stderr, flush=True)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # it found: for SIGTERM (a service manager's stop) that one is a no-op, so the exit is 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    server.run()
    return 0 if server.started else 2
