"""`farm demo [--serve]`: the farm end to end on embedded defaults (see workers/demo.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the farm end to end on embedded defaults")
    p.add_argument("--serve", action="store_true",
                   help="start Flower, beat and the web tier first, then keep everything "
                        "running until Ctrl-C")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(serve=args.serve)
