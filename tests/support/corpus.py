"""Awkward uploads, built in memory as bytes. Everything is deterministic: no randomness without a
seed, no clock, no files from the system.

The reference picture is four solid quadrants (red, green / blue, yellow), which no rotation or
flip maps onto itself, so an orientation applied wrongly shows in the pixels, not only the size.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache
from typing import cast

import numpy as np
import pillow_heif
import simplejpeg
from PIL import Image

from tests.support import icc_profiles

RGB = tuple[int, int, int]
RED: RGB = (220, 40, 40)
GREEN: RGB = (40, 180, 60)
BLUE: RGB = (40, 60, 200)
YELLOW: RGB = (240, 220, 40)
WHITE: RGB = (255, 255, 255)
QUADRANTS = {"top_left": RED, "top_right": GREEN, "bottom_left": BLUE, "bottom_right": YELLOW}

T = Image.Transpose
# What to do to the upright picture so that ImageOps.exif_transpose, applying orientation N,
# gives it back: the inverse of exif_transpose's own method for N.
STORE_FOR_ORIENTATION: dict[int, T | None] = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,  # exif_transpose rotates 270 (90 clockwise): store it 90 anticlockwise
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}

COMMENT = b"Photofarm corpus: private comment"
GPS_METHOD = b"ASCII\0\0\0GPS fix from the corpus"
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
       b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
       b' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"'
       b' xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Photofarm corpus">'
       b"<dc:creator>Someone Private</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
       b'<?xpacket end="w"?>')


def upright(size: tuple[int, int] = (400, 300)) -> Image.Image:
    """The reference: red top left, green top right, blue bottom left, yellow bottom right."""
    width, height = size
    im = Image.new("RGB", size, RED)
    im.paste(GREEN, (width // 2, 0, width, height // 2))
    im.paste(BLUE, (0, height // 2, width // 2, height))
    im.paste(YELLOW, (width // 2, height // 2, width, height))
    return im


def stored(orientation: int, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """The upright picture as a camera held at ``orientation`` stores it."""
    method = STORE_FOR_ORIENTATION[orientation]
    im = upright(size)
    return im if method is None else im.transpose(method)


def private_exif(orientation: int | None) -> Image.Exif:
    """Camera EXIF with a GPS position, and the orientation tag when given."""
    exif = Image.Exif()
    exif[0x010F] = "PhotofarmCam"  # Make
    exif[0x0110] = "Corpus One"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8825] = {  # GPS IFD
        1: "N", 2: (52.0, 22.0, 30.0), 3: "E", 4: (4.0, 53.0, 10.0),
        27: GPS_METHOD,  # GPSProcessingMethod: puts the bytes "GPS" in the file
    }
    return exif


def _jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **params)
    return buf.getvalue()


def _png(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **params)
    return buf.getvalue()


def oriented_jpeg(orientation: int) -> bytes:
    """400x300 upright once orientation ``orientation`` is applied; with EXIF (camera, GPS), a
    COM comment and an XMP packet, all of which must be stripped."""
    return _jpeg(stored(orientation), exif=private_exif(orientation), comment=COMMENT, xmp=XMP)


def broken_exif_jpeg() -> bytes:
    """Orientation 6 (stored 300x400), but the EXIF's TIFF header is mangled (as a fuzzer found:
    a stray SOI marker between the byte order and the magic number), so it cannot be read."""
    data = oriented_jpeg(6)
    tiff = data.index(b"Exif\0\0") + 6
    return data[:tiff + 2] + b"\xff\xd8" + data[tiff + 2:]


@cache
def large_photo() -> bytes:
    """A phone photo: 4032x3024 stored, orientation 6, so 3024x4032 (portrait) upright."""
    return _jpeg(stored(6, (3024, 4032)), exif=private_exif(6))


def draft_rounding(fmt: str) -> bytes:
    """2161x1226: full is 1080x613 (612.72 rounds up), but the half-scale draft decode is
    1081x613, which rounds to 1080x612 when the size is computed from the decode."""
    im = upright((2161, 1226))
    return _jpeg(im) if fmt == "JPEG" else _png(im)


# -- colour: CMYK and ICC profiles -------------------------------------------------------------

CMYK_STRIPES = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0)]  # paper white, cyan, magenta
RGB_STRIPES: list[RGB] = [(60, 180, 75), (128, 128, 128), (200, 60, 50)]


def stripes(mode: str, colours: list, size: int = 60) -> Image.Image:
    """Vertical stripes ``size`` wide and ``size`` high, one per colour."""
    im = Image.new(mode, (size * len(colours), size))
    for i, colour in enumerate(colours):
        im.paste(colour, (i * size, 0, (i + 1) * size, size))
    return im


def cmyk_jpeg(with_icc: bool) -> bytes:
    im = stripes("CMYK", CMYK_STRIPES)
    return _jpeg(im, icc_profile=icc_profiles.cmyk_print()) if with_icc else _jpeg(im)


def rgb_jpeg_with_profile(icc: bytes) -> bytes:
    return _jpeg(stripes("RGB", RGB_STRIPES), icc_profile=icc, subsampling=0)


# -- greyscale, 1-bit, 16-bit ------------------------------------------------------------------

GREYS = [40, 128, 200]


def grey_jpeg() -> bytes:
    return _jpeg(stripes("L", GREYS))


def one_bit_png() -> bytes:
    return _png(stripes("1", [0, 1]))


SIXTEEN_BIT_GREYS = [4096, 32768, 65535]  # -> 16, 128, 255 in 8 bits


def grey16_png(size: int = 60) -> bytes:
    """Mode I;16 stripes, written by Pillow as a 16-bit greyscale PNG. (Built from bytes: Pillow
    13's paste of an int into I;16 keeps only the low byte.)"""
    row = b"".join(struct.pack("<H", v) * size for v in SIXTEEN_BIT_GREYS)
    return _png(Image.frombytes("I;16", (size * len(SIXTEEN_BIT_GREYS), size), row * size))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_rows(width: int, height: int, bit_depth: int, colour_type: int,
                  rows: list[bytes]) -> bytes:
    """A PNG written chunk by chunk: what Pillow cannot write, or a header that lies."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + row for row in rows))  # filter type 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


# 16-bit RGBA stripes: opaque (128, 64, 255), opaque mid-grey, transparent over junk red.
RGBA16_STRIPES = [(0x8000, 0x4000, 0xFFFF, 0xFFFF), (0x8000, 0x8000, 0x8000, 0xFFFF),
                  (0xFFFF, 0, 0, 0)]


def rgb16_png(alpha: bool, size: int = 60) -> bytes:
    """16 bits per channel RGB (colour type 2) or RGBA (6), three stripes, built by hand."""
    pixels = [p if alpha else p[:3] for p in RGBA16_STRIPES]
    row = b"".join(struct.pack(f">{len(p)}H", *p) * size for p in pixels)
    return png_from_rows(size * len(pixels), size, 16, 6 if alpha else 2, [row] * size)


# -- transparency ------------------------------------------------------------------------------

JUNK: RGB = (255, 0, 0)  # the colour hidden under fully transparent pixels


def rgba_png() -> bytes:
    """Opaque blue, fully transparent over junk red, and black at half alpha."""
    return _png(stripes("RGBA", [(*BLUE, 255), (*JUNK, 0), (0, 0, 0, 128)]))


def la_png() -> bytes:
    """Opaque dark grey, and fully transparent over junk black."""
    return _png(stripes("LA", [(50, 255), (0, 0)]))


def palette_image(transparent_index: int = 0) -> Image.Image:
    """Palette: index 0 junk red, index 1 green; stripes of index 1 then index 0."""
    im = Image.new("P", (120, 60), transparent_index)
    im.putpalette([*JUNK, *GREEN] + [0] * (256 - 2) * 3)
    im.paste(1, (0, 0, 60, 60))
    return im


def palette_png_trns() -> bytes:
    return _png(palette_image(), transparency=0)  # written as a tRNS chunk


def transparent_gif() -> bytes:
    buf = io.BytesIO()
    palette_image().save(buf, "GIF", transparency=0)
    return buf.getvalue()


def png_colour_key(mode: str) -> bytes:
    """An RGB or L PNG whose tRNS chunk makes one colour transparent (a colour key): green or
    grey 50, then the keyed colour."""
    if mode == "L":
        return _png(stripes("L", [50, 200]), transparency=200)
    return _png(stripes("RGB", [GREEN, JUNK]), transparency=JUNK)


# -- several frames ----------------------------------------------------------------------------

FRAMES: list[RGB] = [RED, BLUE, GREEN]  # the first frame is red; no later frame is


def _frames(size: tuple[int, int] = (120, 90)) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in FRAMES]


def animated(fmt: str) -> bytes:
    """GIF, WEBP or PNG (APNG) with three frames of different colours."""
    first, *rest = _frames()
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    buf = io.BytesIO()
    first.save(buf, fmt, save_all=True, append_images=rest, duration=100, loop=0, **params)
    return buf.getvalue()


def mpo() -> bytes:
    """A two-picture MPO (a stereo camera, or a phone's depth shot): red, then blue."""
    first, second, _ = _frames()
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second], quality=92)
    return buf.getvalue()


def heic(orientation: int = 6) -> bytes:
    """An iPhone-like HEIC: stored rotated, with the orientation in EXIF (pillow-heif writes it
    as the HEIF irot/imir transform), the private EXIF and XMP beside it."""
    heif = pillow_heif.from_pillow(stored(orientation))
    buf = io.BytesIO()
    heif.save(buf, quality=95, exif=private_exif(orientation).tobytes(), xmp=XMP)
    return buf.getvalue()


# -- refusals ----------------------------------------------------------------------------------

EMPTY = b""
TEXT = b"Photofarm upload\nThis is a plain text file, not a photo.\n" * 4


def noise(size: tuple[int, int], seed: int = 7) -> Image.Image:
    """Incompressible pixels, so the scan or IDAT data is long enough to cut in the middle."""
    width, height = size
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))


def _scan_start(jpeg: bytes) -> int:
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]


def truncated_jpeg() -> bytes:
    """A JPEG cut half-way through its scan data (an upload that stopped)."""
    data = _jpeg(noise((200, 150)))
    start = _scan_start(data)
    return data[:start + (len(data) - start) // 2]


def truncated_png() -> bytes:
    """A PNG cut half-way through its IDAT."""
    data = _png(noise((200, 150)))
    idat = data.index(b"IDAT")
    return data[:idat + (len(data) - idat) // 2]


def corrupt_jpeg() -> bytes:
    """Garbage over the middle of the scan, including a stray SOF0 marker, which libjpeg treats
    as fatal ("two SOF markers")."""
    data = bytearray(_jpeg(noise((200, 150))))
    start = _scan_start(bytes(data))
    mid = start + (len(data) - start) // 2
    garbage = b"\xff\xc0\x00\x11\x08" + bytes(range(0, 250, 5))
    data[mid:mid + len(garbage)] = garbage
    return bytes(data)


def early_eoi_jpeg() -> bytes:
    """The scan stops half-way at an EOI marker, the rest of the old file still after it.
    libjpeg only warns ("premature end") and fills the rest with grey."""
    data = bytearray(_jpeg(noise((200, 150))))
    start = _scan_start(bytes(data))
    mid = start + (len(data) - start) // 2
    data[mid:mid + 2] = b"\xff\xd9"
    return bytes(data)


# -- JPEGs cut short, behind something harmless -----------------------------------------------
# libjpeg reports only its first warning: a harmless one first (stray bytes, a newer JFIF
# revision) must not hide the truncation after it.

def noise_jpeg(mode: str = "RGB", **params: object) -> bytes:
    """200x150 incompressible pixels in ``mode`` (RGB, L or CMYK): the scan is most of the file."""
    return _jpeg(noise((200, 150)).convert(mode), **params)


def ycck_jpeg() -> bytes:
    """CMYK stored as YCCK (Adobe transform 2), as libjpeg-turbo's own encoder writes it."""
    pixels = np.ascontiguousarray(np.asarray(noise((64, 48)).convert("CMYK")))
    return cast(bytes, simplejpeg.encode_jpeg(pixels, quality=92, colorspace="CMYK"))


def cut_and_closed(data: bytes, fraction: float = 0.6) -> bytes:
    """The first ``fraction`` of the file, closed with an end marker (FFD9), as an upload that
    stopped and was "repaired" by a client: libjpeg only warns and fills the rest with grey."""
    return data[:int(len(data) * fraction)] + b"\xff\xd9"


def stray_bytes_before_dqt(data: bytes, stray: bytes = b"\x12\x34\x56") -> bytes:
    """Bytes some cameras leave between header segments, put before the first DQT segment."""
    dqt = data.index(b"\xff\xdb")
    return data[:dqt] + stray + data[dqt:]


def future_jfif(data: bytes) -> bytes:
    """The JFIF APP0 segment claims version 3.01, which libjpeg warns about and decodes."""
    jfif = data.index(b"JFIF\0") + 5
    return data[:jfif] + b"\x03\x01" + data[jfif + 2:]


def garbage_before_end(data: bytes, size: int = 40) -> bytes:
    """Bytes between the last scan and the end marker: libjpeg skips them with a warning once
    every scan is decoded."""
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + bytes(range(1, size + 1)) + data[eoi:]


def stray_bytes_between_scans(data: bytes) -> bytes:
    """A progressive JPEG with stray bytes before the Huffman table of its second scan, where
    they cannot be told from the first scan's data."""
    second_dht = data.index(b"\xff\xc4", _scan_start(data))
    return data[:second_dht] + bytes(range(1, 41)) + data[second_dht:]


def cut_at_scan(data: bytes, scans: int) -> bytes:
    """A progressive JPEG cut just before its scan number ``scans + 1`` and closed with an end
    marker: libjpeg does not warn, and decodes the coefficients of the missing scans as zeros."""
    pos = _scan_start(data)
    for _ in range(scans):
        pos = data.index(b"\xff\xda", pos) + 2
    return data[:pos - 2] + b"\xff\xd9"


def png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG (good CRCs) whose IHDR claims ``width`` x ``height`` RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """30000x30000 = 900 Mpx, over twice Pillow's MAX_IMAGE_PIXELS: Pillow itself errors."""
    return png_header(30000, 30000)


def bomb_png_400mpx() -> bytes:
    """20000x20000 = 400 Mpx: Pillow's own check (over 178,956,970 pixels) fires first."""
    return png_header(20000, 20000)


def bomb_png_pillow_warns() -> bytes:
    """10000x10000 = 100 Mpx: above Pillow's MAX_IMAGE_PIXELS (89.5 Mpx), below twice it, where
    Pillow only warns."""
    return png_header(10000, 10000)


def over_limit_png() -> bytes:
    """8000x8000 = 64 Mpx: under Pillow's limits, over the farm's 50 Mpx default."""
    return png_header(8000, 8000)


def other_format(fmt: str) -> bytes:
    """A perfectly good picture in a format the farm does not take (TIFF, BMP, ...)."""
    buf = io.BytesIO()
    upright((40, 30)).save(buf, fmt)
    return buf.getvalue()
