"""`farm`: the one command operators use. Each subcommand lives in workers/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

from config.settings import SettingsError
from workers import logs

# Subcommand modules, each with register(subparsers); imported lazily so `farm --help` is quick.
COMMANDS = ("worker", "ping", "deadletter", "batch", "stats", "supervise", "flower", "beat",
            "resize", "photo", "feeds", "social", "webhooks", "metrics", "top", "web", "bench",
            "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="Photofarm background-job farm")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"workers.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # Building the parser imports the batch-job registry, which loads the settings.
        args = build_parser().parse_args(argv)
        # Before any command logs: every record escaped (wire logging is held back by the
        # commands that set logging up, worker and beat, not here: tests call main in-process)
        logs.escape_records()
        return int(args.handler(args) or 0)
    except SettingsError as exc:
        print(f"farm: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
