"""`farm batch` (placeholder while it is built)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="(not yet built)")
    p.set_defaults(handler=lambda args: 1)
