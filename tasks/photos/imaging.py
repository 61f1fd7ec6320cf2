"""Make the JPEG variants the apps show from one uploaded original, with Pillow.
Long because the order of its steps is the speed and the strictness: split, they would hide it.

Plain functions over bytes: no broker, no storage, so `farm resize`, the task and the benchmark
run exactly the same code. The order of work is chosen for speed without giving up correctness:

1. read the header only, and refuse what must not be decoded (empty, not an image, a format we
   do not take, a decompression bomb);
2. decode once, a JPEG (colour, greyscale or CMYK) at the smallest DCT scale that still covers
   the largest variant: through libjpeg-turbo's own API (simplejpeg), which scales by eighths
   (3/8 at 8 MP, against Pillow's halves) and stops at libjpeg's first warning, so a scan that
   ends early is refused (Pillow drops the warnings and decodes the missing rows as flat grey),
   as is a file that ends at a scan boundary, which libjpeg does not even warn about; every
   other format goes through Pillow;
3. make the "full" variant and the largest square from that decode, in the source's colour
   mode; flatten transparency onto white, convert the colour to sRGB (with the embedded ICC
   profile) and apply the EXIF orientation on those small outputs rather than the big decode;
4. derive each square from the smallest finished variant that still covers it (the full
   variant, then each square from the one before), so later steps touch few pixels;
5. encode progressive, optimized JPEGs with every piece of metadata left behind.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import simplejpeg
from numpy import uint8
from numpy.typing import NDArray
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from config.settings import Settings
from tasks.core import timing
from tasks.core.errors import PermanentError
from tasks.photos.colour import srgb_transform

# Formats phones and browsers upload (MPO arrives through the JPEG opener). Everything else
# (TIFF, PSD, EPS, ...) is refused: each decoder is attack surface, and nobody posts a photo as a
# PostScript file.
ACCEPTED_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "AVIF"]
WHITE = (255, 255, 255)
# BICUBIC, not LANCZOS: on the 8 MP benchmark photo, the full variant made from the 3/8-scale
# decode is as close to LANCZOS-from-full-decode with BICUBIC (PSNR 48.6 dB before encoding) as
# with LANCZOS (48.3 dB), at two thirds of the time; as stored, at quality 85, it is 37.0 dB, the
# encoding's own loss (37.1 dB). `python -m bench.quality [--source PHOTO]` measures it.
RESAMPLE = Image.Resampling.BICUBIC
# Pillow first shrinks by an integer factor with a box filter, then resamples the rest: several
# times faster, and at 2.0 indistinguishable for photos (Pillow's docs).
REDUCING_GAP = 2.0
# A smaller square from a larger one is a (near) exact halving: a plain 2x2 box average is the
# right filter there, and ten times cheaper than LANCZOS over the same pixels.
DERIVED_REDUCING_GAP = 1.0

try:  # iPhones upload HEIC; pillow-heif adds the decoder when its wheel is installed
    import pillow_heif

    pillow_heif.register_heif_opener()
    ACCEPTED_FORMATS.append("HEIF")
except ImportError:  # pragma: no cover - it is a pinned dependency
    pass
Image.init()  # Pillow registers most plugins lazily; open(formats=...) needs them registered
ACCEPTED_FORMATS = [f for f in ACCEPTED_FORMATS if f in Image.OPEN]


class ImageRefused(PermanentError):
    """The upload cannot become a photo; the message is the one-line reason."""


@dataclass(frozen=True)
class VariantSpec:
    name: str
    size: int  # long edge for "full", side for squares
    square: bool


@dataclass(frozen=True)
class Rendered:
    name: str
    data: bytes
    width: int
    height: int


def variant_specs(s: Settings) -> tuple[VariantSpec, ...]:
    """"full" (long edge), then the centre-cropped squares, largest first."""
    return (VariantSpec("full", s.photo_full_size, False),
            *(VariantSpec(f"sq{n}", n, True) for n in s.photo_squares))


def make_variants(data: bytes, specs: Sequence[VariantSpec], *, quality: int = 85,
                  max_pixels: int = 50_000_000) -> list[Rendered]:
    """Every variant of ``data`` as JPEG bytes, in ``specs`` order; ImageRefused if it can't."""
    if not data:
        raise ImageRefused("empty file (0 bytes)")
    full = [s for s in specs if not s.square]
    squares = sorted((s for s in specs if s.square), key=lambda s: -s.size)
    with timing.phase("decode"):
        im = open_checked(data, max_pixels)
        header_size = im.size  # the sizes come from this, however small the scaled decode is
        cover = (max((s.size for s in full), default=0), max((s.size for s in squares), default=0))
        decoded = decode_jpeg(data, im, *cover)
        if decoded is None:
            load_checked(im)
        # Read after decoding: a PNG may carry its eXIf chunk after the image data.
        icc, exif = im.info.get("icc_profile"), im.info.get("exif")
        base = normalise_mode(decoded or im)
    with timing.phase("resize"):
        images: dict[str, Image.Image] = {}
        for spec in full:
            images[spec.name] = finish(fit(base, spec.size, header_size), icc, exif)
        # Squares come from the largest finished image whose short edge still covers them: the
        # full variant for ordinary photos (far fewer pixels than the decode), else the decode.
        for spec in squares:
            larger = [im for im in images.values() if min(im.size) >= spec.size]
            if larger:
                source = min(larger, key=lambda im: im.width * im.height)
                gap = DERIVED_REDUCING_GAP if source.width == source.height else REDUCING_GAP
                images[spec.name] = centre_square(source, spec.size, gap)
            else:
                images[spec.name] = finish(centre_square(base, spec.size), icc, exif)
    with timing.phase("encode"):
        return [encode(spec.name, images[spec.name], quality) for spec in specs]


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open from the header alone, refusing bombs before a single pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only errors at twice its limit); a warning is a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRefused(f"not an image in an accepted format "
                           f"({', '.join(ACCEPTED_FORMATS)})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRefused(bomb_reason(exc, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused(f"corrupt image header: {one_line(exc)}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRefused(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRefused(f"image is {width}x{height} ({width * height} pixels), over the "
                           f"limit of {max_pixels} pixels (FARM_MAX_PIXELS)")
    return im


def bomb_reason(exc: Exception, max_pixels: int) -> str:
    """Pillow's own check runs inside Image.open, before ours, and quotes Pillow's limits; name
    the farm's limit instead whenever the image is over it too."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found and int(found[1]) > max_pixels:
        return (f"decompression bomb refused: {found[1]} pixels, over the limit of "
                f"{max_pixels} pixels (FARM_MAX_PIXELS)")
    return f"decompression bomb refused: {one_line(exc)}"


# libjpeg warnings that leave every pixel right: stray bytes between marker segments (some
# cameras write them), a newer JFIF revision. libjpeg reports only its first warning, so one of
# these would hide a truncation after it: the file is tidied (tidy_jpeg) and decoded strictly
# again. Any other warning or error refuses the image.
HARMLESS_WARNINGS = ("extraneous bytes before marker", "unknown jfif revision")
# Bytes skipped just before the end marker: every scan was decoded whole before libjpeg looked
# for it, so the pixels are right and nothing is left to check.
GARBAGE_AT_END = "extraneous bytes before marker 0xd9"
# Pillow opens a JPEG as one of these modes (1, 3 or 4 components).
JPEG_COLORSPACES = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}


def decode_jpeg(data: bytes, im: Image.Image, long_edge: int, square: int) -> Image.Image | None:
    """A JPEG (or MPO's first picture) decoded by libjpeg-turbo at the smallest scale covering
    the long edge and the square, every warning heard; None for the formats Pillow decodes."""
    if im.format not in ("JPEG", "MPO"):
        return None
    colorspace = JPEG_COLORSPACES.get(im.mode)
    if colorspace is None:
        raise ImageRefused(f"unsupported JPEG colour mode {im.mode}")
    width, height = im.size
    factor = min(1.0, max(long_edge / max(width, height), square / min(width, height)))
    options = {"colorspace": colorspace,
               "min_width": math.ceil(width * factor), "min_height": math.ceil(height * factor)}
    try:
        try:
            pixels = decode_strict(data, options)
        except ValueError as exc:
            if not any(w in str(exc).lower() for w in HARMLESS_WARNINGS):
                raise
            pixels = decode_strict(tidy_jpeg(data), options)
    except (ValueError, OSError) as exc:
        raise ImageRefused(f"truncated or corrupt image data: {one_line(exc)}") from None
    if not scans_complete(data):
        raise ImageRefused("truncated or corrupt image data: scans missing (the file ends "
                           "at a scan boundary)")
    rows, columns = pixels.shape[:2]
    # Pillow reads every CMYK JPEG as Adobe-inverted (what Photoshop and Pillow itself write).
    rawmode = "CMYK;I" if im.mode == "CMYK" else im.mode
    return Image.frombuffer(im.mode, (columns, rows), pixels, "raw", rawmode, 0, 1)


def decode_strict(data: bytes, options: dict[str, object]) -> NDArray[uint8]:
    """simplejpeg's decode, stopping at the first warning, which it raises as ValueError."""
    try:
        return cast(NDArray[uint8], simplejpeg.decode_jpeg(data, strict=True, **options))
    except ValueError as exc:
        if GARBAGE_AT_END not in str(exc).lower():
            raise
    return cast(NDArray[uint8], simplejpeg.decode_jpeg(data, strict=False, **options))


# A marker between segments: 0xFF (and fill bytes), then a code that is not a stuffed zero. In a
# scan's data, restart markers belong to the scan and do not end it. (Written with one literal
# 0xFF first, which lets the regex engine skip ahead to it: 25 times faster through a scan.)
MARKER = re.compile(rb"\xff[\xff]*([^\x00\xff])")
MARKER_AFTER_SCAN = re.compile(rb"\xff[\xff]*([^\x00\xd0-\xd7\xff])")
NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RSTn: markers without a segment
# Start-of-frame markers (every 0xCn but DHT, JPG and DAC): they list the components. Lossless
# frames send samples, not coefficients.
SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
LOSSLESS_SOF = {0xC3, 0xC7, 0xCB, 0xCF}
DATA = -1  # in jpeg_markers: not a marker, the bytes that belong to the one before


def jpeg_markers(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Each marker after SOI as (code, its segment from the length field on), each followed by
    (DATA, bytes) where bytes belong to it: a scan's data, or after the end marker the rest of
    the file. The stray bytes between segments that libjpeg skips with a warning are left out.
    Lazy: a scan's data is only searched for its end when the caller reads on."""
    pos = 2
    while found := MARKER.search(data, pos):
        code, pos = found[1][0], found.end()
        if code == 0xD9:
            yield code, b""
            yield DATA, data[pos:]
            return
        if code in NO_LENGTH:
            yield code, b""
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:  # a bogus length: left as it is for the decoder to refuse
            yield code, data[pos:]
            return
        yield code, data[pos:pos + length]
        pos += length
        if code == 0xDA:  # the scan's data runs to the next marker
            end = MARKER_AFTER_SCAN.search(data, pos)
            stop = end.start() if end else len(data)
            yield DATA, data[pos:stop]
            pos = stop


def tidy_jpeg(data: bytes) -> bytes:
    """``data`` without stray bytes between its marker segments and with JFIF version 1: the
    pixels libjpeg decodes from it are the same, and a strict decode then hears any warning
    that came after the harmless one. Bytes at the end of a scan's data cannot be told from the
    scan and stay."""
    out = [data[:2]]  # SOI
    for code, segment in jpeg_markers(data):
        if code == 0xE0 and segment[2:7] == b"JFIF\0" and len(segment) > 8:
            segment = segment[:7] + b"\x01\x02" + segment[9:]
        out += [segment] if code == DATA else [bytes([0xFF, code]), segment]
    return b"".join(out)


def scans_complete(data: bytes) -> bool:
    """Whether the scans before the end marker send every coefficient of every component to
    full precision. libjpeg does not warn when a multi-scan JPEG (progressive, or one scan per
    component) ends at a scan boundary: it decodes what never came as zeros, a blurred or
    discoloured picture. A baseline JPEG's first scan completes it, so only its header is read."""
    done: dict[int, set[int]] = {}
    for code, segment in jpeg_markers(data):
        if code in LOSSLESS_SOF:
            return True
        if code in SOF:
            count = segment[7] if len(segment) > 7 else 0
            done = {c: set() for c in segment[8:8 + 3 * count:3]}
        elif code == 0xDA and done:
            count = segment[2] if len(segment) > 2 else 0
            params = segment[3 + 2 * count:6 + 2 * count]  # Ss, Se, then Ah and Al in a byte
            if len(params) == 3 and params[2] & 0x0F == 0:  # Al 0: sent to full precision
                for c in segment[3:3 + 2 * count:2]:
                    done.get(c, set()).update(range(params[0], min(params[1], 63) + 1))
            if all(len(sent) == 64 for sent in done.values()):
                return True
        elif code == 0xD9:
            break
    return not done


def load_checked(im: Image.Image) -> None:
    """Decode, refusing truncated or corrupt data (never half an image: Pillow's global
    LOAD_TRUNCATED_IMAGES stays off)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(f"truncated or corrupt image data: {one_line(exc)}") from None


def normalise_mode(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of RGB, RGBA, L, LA or CMYK, losing nothing that shows."""
    mode = im.mode
    if mode in ("L", "RGB") and "transparency" in im.info:  # a PNG tRNS colour key
        return im.convert("LA" if mode == "L" else "RGBA")
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return im
    if mode in ("P", "PA"):  # palette: resize would use nearest-neighbour; expand first
        has_alpha = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode.startswith("I"):  # 16/32-bit greyscale: scale to 8 bits instead of clipping
        return im.convert("I").point(lambda v: v * (255 / 65535)).convert("L")
    if mode == "F":
        return im.point(lambda v: v * 255).convert("L")
    if mode == "1":
        return im.convert("L")
    if mode in ("RGBa", "La"):
        return im.convert(mode.upper())
    return im.convert("RGB")  # YCbCr, LAB, HSV, RGBX


def fit(im: Image.Image, long_edge: int,
        header_size: tuple[int, int] | None = None) -> Image.Image:
    """Scale down so the long edge is ``long_edge``, keeping the aspect of ``header_size`` (the
    size before any draft decoding); never scale up."""
    width, height = header_size or im.size
    scale = long_edge / max(width, height)
    if scale >= 1:
        return im.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return im.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP)


def centre_square(im: Image.Image, side: int, gap: float = REDUCING_GAP) -> Image.Image:
    """The centred square of the short edge, scaled to ``side`` (crop and scale in one pass)."""
    width, height = im.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    target = min(side, short)
    if (left, top, target) == (0, 0, short):
        return im.copy()
    return im.resize((target, target), RESAMPLE, box=(left, top, left + short, top + short),
                     reducing_gap=gap)


# What Pillow's EXIF reader raises on a mangled TIFF structure (bad header, short data); it reads
# before it transposes, so the picture is untouched.
EXIF_ERRORS = (SyntaxError, ValueError, TypeError, LookupError, EOFError, OSError, struct.error)


def finish(im: Image.Image, icc: bytes | None, exif: bytes | None) -> Image.Image:
    """Flatten onto white, convert to sRGB RGB, apply the EXIF orientation."""
    if im.mode == "LA":
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, WHITE)
        flat.paste(im, mask=im.getchannel("A"))
        im = flat
    transform = srgb_transform(icc, im.mode) if icc else None
    if transform is not None:
        im = cast(Image.Image, ImageCms.applyTransform(im, transform))  # None only in place
    if im.mode != "RGB":
        im = im.convert("RGB")  # greyscale, or CMYK without a usable profile
    if exif:
        im.info["exif"] = exif
        # EXIF too broken to read (found by fuzzing): the picture as it is stored.
        with contextlib.suppress(*EXIF_ERRORS):
            ImageOps.exif_transpose(im, in_place=True)
    return im


def encode(name: str, im: Image.Image, quality: int) -> Rendered:
    # A fresh info dict: nothing of the original (EXIF, GPS, comments, XMP, ICC) is written.
    im.info = {}
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    return Rendered(name, buf.getvalue(), im.width, im.height)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
