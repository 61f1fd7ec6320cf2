"""`farm resize INPUT OUTDIR`: the exact pipeline of photos.process, on a local file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("resize", help="make a photo's variants from a local file",
                       description="Exit 0 with the variants written as OUTDIR/NAME.jpg; exit 2 "
                                   "with one line naming the reason for a refused file.")
    p.add_argument("input", type=Path)
    p.add_argument("outdir", type=Path)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tasks.core import timing
    from tasks.photos.imaging import ImageRefused, make_variants, variant_specs

    s = get_settings()
    try:
        data = args.input.read_bytes()
    except OSError as exc:
        print(f"farm resize: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    if len(data) > s.max_upload_mb * 2**20:
        print(f"farm resize: refused: file is {len(data) / 2**20:.1f} MiB, over the "
              f"{s.max_upload_mb} MiB limit", file=sys.stderr)
        return 2
    try:
        with timing.collect() as phases:
            rendered = make_variants(data, variant_specs(s), quality=s.jpeg_quality,
                                     max_pixels=s.max_pixels)
    except ImageRefused as exc:
        print(f"farm resize: refused: {exc}", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    for v in rendered:
        path = args.outdir / f"{v.name}.jpg"
        path.write_bytes(v.data)
        print(f"{path}  {v.width}x{v.height}  {len(v.data)} bytes")
    print(timing.format_phases(phases))
    return 0
