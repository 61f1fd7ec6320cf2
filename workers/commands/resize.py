"""`farm resize INPUT OUTDIR`: the exact pipeline of photos.process, on a local file."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from config.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("resize", help="make a photo's variants from a local file",
                       description="Exit 0 with the variants written as OUTDIR/NAME.jpg; exit 2 "
                                   "with one line naming the reason for a refused file, an "
                                   "input that cannot be read or an OUTDIR that cannot be "
                                   "written.")
    p.add_argument("input", type=Path)
    p.add_argument("outdir", type=Path)
    p.set_defaults(handler=run)


class Unusable(Exception):
    """A path the command cannot use; the message is the one line it prints."""


def run(args: argparse.Namespace) -> int:
    from tasks.core import timing
    from tasks.photos.imaging import ImageRefused, make_variants, variant_specs

    s = get_settings()
    limit = s.max_upload_mb * 2**20
    try:
        data = read_input(args.input, limit)
        if len(data) > limit:
            raise Unusable(f"refused: file is {args.input.stat().st_size / 2**20:.1f} MiB, "
                           f"over the {s.max_upload_mb} MiB limit")
        with timing.collect() as phases:
            rendered = make_variants(data, variant_specs(s), quality=s.jpeg_quality,
                                     max_pixels=s.max_pixels)
        make_outdir(args.outdir)
        for v in rendered:
            path = args.outdir / f"{v.name}.jpg"
            try:
                path.write_bytes(v.data)
            except OSError as exc:
                raise Unusable(f"cannot write {path}: {reason(exc)}") from None
            print(f"{path}  {v.width}x{v.height}  {len(v.data)} bytes")
    except ImageRefused as exc:
        print(f"farm resize: refused: {exc}", file=sys.stderr)
        return 2
    except Unusable as exc:
        print(f"farm resize: {exc}", file=sys.stderr)
        return 2
    print(timing.format_phases(phases))
    return 0


def read_input(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file. A device (/dev/zero) could be read
    forever, and a pipe with no writer would block the open itself: hence O_NONBLOCK."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                raise Unusable(f"cannot read {path}: {what}")
            with open(fd, "rb", closefd=False) as f:
                return f.read(limit + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unusable(f"cannot read {path}: {reason(exc)}") from None


def make_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise Unusable(f"cannot write to {outdir}: not a directory")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Unusable(f"cannot write to {outdir}: {reason(exc)}") from None


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
