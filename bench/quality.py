"""How close the "full" variant is to the best Pillow can do, in PSNR (dB, higher is closer).

    python -m bench.quality [--source PHOTO.jpg]     (or: farm bench quality)

The reference is the slow, careful pipeline: a full-size decode, LANCZOS down to the full
variant's size, then the same finishing (sRGB, orientation), not encoded. Against it:

- ours, as stored: the full variant's JPEG bytes (scaled DCT decode, BICUBIC, quality 85);
- ours before encoding: the same steps without the JPEG encode, with BICUBIC and with LANCZOS
  (why RESAMPLE is BICUBIC);
- baseline: the reference itself encoded at quality 85, the encoding's own share of the loss.

The default source is bench.resize's 3264x2448 photo-like JPEG; a real photo gives a different
(usually higher: less fine noise) figure, so pass one with --source to measure it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from bench.resize import QUALITY, photo_like_jpeg
from config.settings import load_settings
from tasks.photos import imaging


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def reference(data: bytes, long_edge: int) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    icc, exif = im.info.get("icc_profile"), im.info.get("exif")
    scale = long_edge / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    resized = im.resize(size, Image.Resampling.LANCZOS) if scale < 1 else im.copy()
    return imaging.finish(imaging.normalise_mode(resized), icc, exif)


def ours_unencoded(data: bytes, cover: tuple[int, int],
                   resample: Image.Resampling) -> Image.Image:
    """imaging.make_variants' steps for the full variant, stopping before the encode: the
    decode covers the full variant's long edge and the largest square, as there."""
    long_edge, square = cover
    im = imaging.open_checked(data, max_pixels=10**9)
    decoded = imaging.decode_jpeg(data, im, long_edge, square)
    if decoded is None:
        imaging.load_checked(im)
    icc, exif = im.info.get("icc_profile"), im.info.get("exif")
    base = imaging.normalise_mode(decoded or im)
    width, height = im.size
    scale = long_edge / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = base.resize(size, resample, reducing_gap=imaging.REDUCING_GAP)
    return imaging.finish(resized, icc, exif)


def jpeg_round_trip(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description="image-quality benchmark (PSNR)")
    parser.add_argument("--source", type=Path, help="a JPEG to measure (default: bench photo)")
    opts = parser.parse_args()
    data = opts.source.read_bytes() if opts.source else photo_like_jpeg()
    s = load_settings({}, dotenv=Path(os.devnull))
    specs = imaging.variant_specs(s)
    full = next(spec for spec in specs if spec.name == "full")
    header = Image.open(io.BytesIO(data))
    print(f"source: {opts.source or 'bench photo'}, {header.format} {header.width}x"
          f"{header.height}, {len(data)} bytes; full variant long edge {full.size}")

    cover = (full.size, max(spec.size for spec in specs if spec.square))
    ref = reference(data, full.size)
    stored = imaging.make_variants(data, specs, quality=QUALITY)[specs.index(full)]
    stored_im = Image.open(io.BytesIO(stored.data)).convert("RGB")
    bicubic, lanczos = Image.Resampling.BICUBIC, Image.Resampling.LANCZOS
    rows = [
        ("ours, as stored (BICUBIC, q85)", psnr(stored_im, ref)),
        ("ours before encoding, BICUBIC", psnr(ours_unencoded(data, cover, bicubic), ref)),
        ("ours before encoding, LANCZOS", psnr(ours_unencoded(data, cover, lanczos), ref)),
        ("baseline: reference at q85", psnr(jpeg_round_trip(ref), ref)),
    ]
    for name, value in rows:
        print(f"{name:<34} PSNR {value:5.1f} dB")
    print(f"full variant {stored.width}x{stored.height}: {rows[0][1]:.1f} dB as stored, "
          f"{rows[1][1]:.1f} dB before encoding, q85 alone {rows[3][1]:.1f} dB")


if __name__ == "__main__":
    main()
