"""Make the JPEG variants the apps show from one uploaded original, with Pillow.

Plain functions over bytes: no broker, no storage, so `farm resize`, the task and the benchmark
run exactly the same code. The order of work is chosen for speed without giving up correctness:

1. read the header only, and refuse what must not be decoded (empty, not an image, a format we
   do not take, a decompression bomb);
2. decode once, a JPEG at the smallest DCT scale that still covers the largest variant: through
   libjpeg-turbo's own API (simplejpeg), which scales by eighths (3/8 at 8 MP, against Pillow's
   halves) and reports a scan that ends early (Pillow drops libjpeg's warnings and decodes the
   missing rows as flat grey); CMYK JPEGs, whose Adobe inversion Pillow knows, and every other
   format go through Pillow (`Image.draft` for JPEG);
3. make the "full" variant and the largest square from that decode, in the source's colour
   mode; flatten transparency onto white, convert the colour to sRGB (with the embedded ICC
   profile) and apply the EXIF orientation on those small outputs rather than the big decode;
4. derive each square from the smallest finished variant that still covers it (the full
   variant, then each square from the one before), so later steps touch few pixels;
5. encode progressive, optimized JPEGs with every piece of metadata left behind.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import simplejpeg
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
# BICUBIC, not LANCZOS: on the 8 MP benchmark photo, the full variant made from the half-scale
# decode is as close to LANCZOS-from-full-decode with BICUBIC (PSNR 50.5 dB) as with LANCZOS
# (50.3 dB), at two thirds of the time.
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
            draft_for(im, *cover)
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
        raise ImageRefused(f"decompression bomb refused: {one_line(exc)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused(f"corrupt image header: {one_line(exc)}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRefused(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRefused(f"image is {width}x{height} ({width * height} pixels), over the "
                           f"{max_pixels}-pixel limit")
    return im


# libjpeg warnings that leave every pixel right (stray bytes before a marker, which some cameras
# write; a newer JFIF revision): such a file is decoded by Pillow instead, as before. Any other
# warning or error refuses the image.
HARMLESS_WARNINGS = ("extraneous bytes before marker", "unknown jfif revision")


def decode_jpeg(data: bytes, im: Image.Image, long_edge: int, square: int) -> Image.Image | None:
    """A colour or greyscale JPEG (or MPO's first picture) decoded by libjpeg-turbo at the
    smallest scale covering the long edge and the square, every warning heard; None for what
    Pillow decodes instead (other formats, CMYK, a harmless warning)."""
    if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
        return None
    width, height = im.size
    factor = min(1.0, max(long_edge / max(width, height), square / min(width, height)))
    options = {"colorspace": "GRAY" if im.mode == "L" else "RGB",
               "min_width": math.ceil(width * factor), "min_height": math.ceil(height * factor)}
    try:
        pixels = simplejpeg.decode_jpeg(data, strict=True, **options)
    except (ValueError, OSError) as exc:
        if any(w in str(exc).lower() for w in HARMLESS_WARNINGS):
            return None
        raise ImageRefused(f"truncated or corrupt image data: {one_line(exc)}") from None
    rows, columns = pixels.shape[:2]
    return Image.frombuffer(im.mode, (columns, rows), pixels, "raw", im.mode, 0, 1)


def draft_for(im: Image.Image, long_edge: int, square: int) -> None:
    """Ask a JPEG decoder for the smallest DCT scale (1/2, 1/4, 1/8) that still covers both the
    full variant's long edge and the largest square's side (the short edge, once cropped)."""
    if im.format not in ("JPEG", "MPO"):
        return
    width, height = im.size
    factor = max(long_edge / max(width, height), square / min(width, height))
    if factor < 1:
        im.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))


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
