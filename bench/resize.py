"""Per-photo time to make every default variant of an 8-megapixel photo, beside two baselines
measured in the same run:

- naive Pillow: full decode, then LANCZOS from the full image for each variant;
- pyvips: ``thumbnail`` (shrink-on-load) for "full" and the largest square, then
  ``thumbnail_image`` down the chain of squares, with libvips held to one thread as the farm's
  prefork workers hold Pillow (and, for reference, with its default threads).

    python -m bench.resize [--rounds R] [--photos N]     (or: farm bench resize)

Each method runs in its own child process (so its peak RSS is its own), rounds alternate the
methods so machine drift hits all of them, and medians are compared. All methods write the same
JPEGs: quality 85, progressive, optimized, metadata stripped. Then two of our processes run side
by side for the 2-core throughput. The last line holds the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image  # imported where used: the bench's children load what they measure

WIDTH, HEIGHT, SOURCE_QUALITY = 3264, 2448, 90
QUALITY = 85
SQUARES = (612, 306, 150)
FULL = 1080


def photo_like_jpeg() -> bytes:
    """A deterministic 3264x2448 JPEG at quality 90 with a photo's mix of smooth areas, edges and
    fine texture (so it compresses like one: a few MB, not a flat test card)."""
    from PIL import Image, ImageFilter

    size = (WIDTH, HEIGHT)
    base = Image.merge("RGB", (
        Image.effect_mandelbrot(size, (-2.3, -1.25, 0.9, 1.15), 96),
        Image.linear_gradient("L").rotate(30, expand=False).resize(size),
        Image.radial_gradient("L").resize(size),
    ))
    noise = Image.frombytes("RGB", size, random.Random(2011).randbytes(WIDTH * HEIGHT * 3))
    photo = Image.blend(base, noise.filter(ImageFilter.GaussianBlur(1.2)), 0.22)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=SOURCE_QUALITY)
    return buf.getvalue()


def ours() -> Callable[[bytes], list[bytes]]:
    from config.settings import load_settings
    from tasks.photos.imaging import make_variants, variant_specs

    specs = variant_specs(load_settings({}, dotenv=Path(os.devnull)))
    return lambda data: [v.data for v in make_variants(data, specs, quality=QUALITY)]


def naive() -> Callable[[bytes], list[bytes]]:
    from PIL import Image

    def run(data: bytes) -> list[bytes]:
        im = Image.open(io.BytesIO(data))
        im.load()
        scale = FULL / max(im.size)
        outs = [im.resize((round(im.width * scale), round(im.height * scale)),
                          Image.Resampling.LANCZOS)]
        short = min(im.size)
        left, top = (im.width - short) // 2, (im.height - short) // 2
        for side in SQUARES:
            outs.append(im.resize((side, side), Image.Resampling.LANCZOS,
                                  box=(left, top, left + short, top + short)))
        return [_jpeg(o) for o in outs]

    return run


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    return buf.getvalue()


def vips(threads: int) -> Callable[[bytes], list[bytes]]:
    import pyvips

    if threads:
        pyvips.concurrency_set(threads)
    save = {"Q": QUALITY, "interlace": True, "optimize_coding": True, "keep": "none"}

    def run(data: bytes) -> list[bytes]:
        outs = [pyvips.Image.thumbnail_buffer(data, FULL).jpegsave_buffer(**save)]
        square = pyvips.Image.thumbnail_buffer(data, SQUARES[0], height=SQUARES[0],
                                               crop="centre")
        outs.append(square.jpegsave_buffer(**save))
        for side in SQUARES[1:]:
            square = square.thumbnail_image(side, height=side, crop="centre")
            outs.append(square.jpegsave_buffer(**save))
        return outs

    return run


METHODS: dict[str, Callable[[], Callable[[bytes], list[bytes]]]] = {
    "ours": ours,
    "naive": naive,
    "pyvips-1thread": lambda: vips(1),
    "pyvips-threads": lambda: vips(0),
}


def child(method: str, photos: int, source: Path) -> None:
    """Time one method in this process; print per-photo seconds as JSON."""
    data = source.read_bytes()
    run = METHODS[method]()
    run(data)  # warm up: imports, caches, first allocations
    times = []
    for _ in range(photos):
        start = time.perf_counter()
        run(data)
        times.append(time.perf_counter() - start)
    print(json.dumps({"median": statistics.median(times)}))


def spawn(method: str, photos: int, source: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.resize", "--child", method,
                             "--photos", str(photos), "--source", str(source)],
                            stdout=subprocess.PIPE, text=True)


def reap(proc: subprocess.Popen[str]) -> tuple[float, int]:
    """(median seconds per photo, peak RSS in KiB) of a finished child."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.args!r}): {out}")
    return json.loads(out)["median"], usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description="resize benchmark")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=8, help="photos per method per round")
    parser.add_argument("--child")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--make-source", type=Path)
    opts = parser.parse_args()
    if opts.make_source:
        opts.make_source.write_bytes(photo_like_jpeg())
        return
    if opts.child:
        child(opts.child, opts.photos, opts.source)
        return

    source = Path(os.environ.get("TMPDIR", "/tmp")) / f"farm-bench-{os.getpid()}.jpg"
    # Made in a child: a child's peak RSS counts its parent's size at fork, so this process stays
    # small and each method's peak is its own.
    subprocess.run([sys.executable, "-m", "bench.resize", "--make-source", str(source)],
                   check=True)
    try:
        print(f"source: {WIDTH}x{HEIGHT} JPEG q{SOURCE_QUALITY}, {source.stat().st_size} bytes; "
              f"variants: full {FULL}, squares {SQUARES}; {os.cpu_count()} cores")
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        peaks: dict[str, int] = dict.fromkeys(METHODS, 0)
        for _ in range(opts.rounds):
            for method in METHODS:
                photos = max(2, opts.photos // 3) if method == "naive" else opts.photos
                seconds, peak = reap(spawn(method, photos, source))
                times[method].append(seconds)
                peaks[method] = max(peaks[method], peak)
        med = {m: statistics.median(v) * 1000 for m, v in times.items()}
        for m in METHODS:
            print(f"{m:<15} {med[m]:7.1f} ms/photo  (min {min(times[m]) * 1000:.1f}, max "
                  f"{max(times[m]) * 1000:.1f})  peak RSS {peaks[m] / 1024:.0f} MiB")

        # Throughput: one process per core side by side, as the cpu profile runs; each child's
        # median pace is measured while the others run.
        cores = os.cpu_count() or 1
        procs = [spawn("ours", opts.photos * 2, source) for _ in range(cores)]
        rate = sum(1 / reap(p)[0] for p in procs)
        print(f"throughput: {cores} processes side by side, {rate:.1f} photos/s in all")
        print(f"ours/pyvips-1thread {med['ours'] / med['pyvips-1thread']:.2f} (goal <= 1.0), "
              f"ours/pyvips-threads {med['ours'] / med['pyvips-threads']:.2f}, "
              f"naive/ours {med['naive'] / med['ours']:.1f}x (goal >= 4), "
              f"{rate:.0f} photos/s on {cores} cores (goal >= 30)")
    finally:
        source.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
