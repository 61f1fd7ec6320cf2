"""`farm bench NAME`: run one of the benchmarks in bench/ (each prints its ratio last)."""

from __future__ import annotations

import argparse
import runpy
import sys

BENCHMARKS = {"enqueue": "bench.enqueue", "resize": "bench.resize", "fanout": "bench.fanout",
              "push": "bench.push", "fetch": "bench.fetch", "webhooks": "bench.webhooks",
              "quality": "bench.quality", "farm": "bench.farm",
              "drain": "bench.drain", "celebrity": "bench.celebrity", "brokers": "bench.brokers"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help=f"run a benchmark ({', '.join(BENCHMARKS)})")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    sys.argv = [BENCHMARKS[args.name], *args.rest]
    runpy.run_module(BENCHMARKS[args.name], run_name="__main__")
    return 0
