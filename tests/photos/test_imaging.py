"""The resizing pipeline against a corpus of awkward uploads (tests/support/corpus.py), each with
its exact outcome: variant names and sizes, mode RGB, orientation checked by pixels, colours, no
metadata, or the one-line refusal reason."""

from __future__ import annotations

import io
import re
import struct
import time
from collections.abc import Callable

import pytest
from PIL import Image, ImageCms, ImageOps

from config.settings import Settings
from tasks.photos.imaging import (
    ImageRefused,
    decode_jpeg,
    make_variants,
    scans_complete,
    variant_specs,
)
from tests.support import corpus, icc_profiles
from tests.support.corpus import BLUE, GREEN, QUADRANTS, RED, RGB, WHITE

SPECS = variant_specs(Settings())
NAMES = ["full", "sq612", "sq306", "sq150"]
Sizes = dict[str, tuple[int, int]]
# Solid areas through two JPEG encodings (the corpus and the variant) stay within this.
TOLERANCE = 8

# Where each quadrant's colour must be, as fractions of the width and height; the squares are
# centre crops, so each of them still has the four quadrants in these places.
QUADRANT_AT = {"top_left": (0.25, 0.25), "top_right": (0.75, 0.25),
               "bottom_left": (0.25, 0.75), "bottom_right": (0.75, 0.75)}
# Markers a metadata-free baseline/progressive JPEG needs before its first scan: APP0 (JFIF),
# DQT, SOF2 (progressive), DHT, DRI, SOS. No APP1 (EXIF, XMP), APP2 (ICC), APP13, COM.
ALLOWED_MARKERS = {0xE0, 0xDB, 0xC2, 0xC4, 0xDD, 0xDA}
# Bytes of the corpus's private metadata (EXIF, GPS, camera, comment, XMP); no output may hold
# them, nor an ICC_PROFILE segment.
METADATA_BYTES = [b"Exif", b"http://ns.adobe.com/xap", b"GPS", b"PhotofarmCam", corpus.COMMENT,
                  b"Someone Private"]
PRIVATE_BYTES = [*METADATA_BYTES, b"ICC_PROFILE"]


def header_markers(data: bytes) -> list[int]:
    """The markers of a JPEG from SOI up to and including its first SOS."""
    assert data[:2] == b"\xff\xd8"
    pos, markers = 2, []
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:
            return markers
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]


def assert_clean_jpeg(data: bytes, im: Image.Image) -> None:
    """Progressive JPEG, and nothing of the original's metadata anywhere in it."""
    markers = header_markers(data)
    assert set(markers) <= ALLOWED_MARKERS, [hex(m) for m in markers]
    assert 0xC2 in markers  # SOF2: progressive
    assert im.info.get("progressive") and im.info.get("progression")
    assert len(im.getexif()) == 0
    assert not {"exif", "icc_profile", "comment", "xmp", "XML:com.adobe.xmp", "photoshop",
                "adobe"} & im.info.keys()
    for private in PRIVATE_BYTES:
        assert private not in data, private


def variants(data: bytes, **options: int) -> dict[str, Image.Image]:
    """make_variants, with what every output must be checked on the way: names in order, the
    reported size, a JPEG in mode RGB, progressive and free of metadata."""
    rendered = make_variants(data, SPECS, **options)
    assert [r.name for r in rendered] == NAMES
    out = {}
    for r in rendered:
        im = Image.open(io.BytesIO(r.data))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (r.width, r.height)), r.name
        assert_clean_jpeg(r.data, im)
        im.load()
        out[r.name] = im
    return out


def sizes(out: dict[str, Image.Image]) -> Sizes:
    return {name: im.size for name, im in out.items()}


def at(im: Image.Image, fx: float, fy: float) -> RGB:
    return im.getpixel((int(im.width * fx), int(im.height * fy)))


def assert_colour(actual: RGB, expected: RGB, tolerance: int = TOLERANCE) -> None:
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance, \
        f"{actual} is not {expected}"


def assert_upright(im: Image.Image) -> None:
    for quadrant, (fx, fy) in QUADRANT_AT.items():
        assert_colour(at(im, fx, fy), QUADRANTS[quadrant])


def stripe(im: Image.Image, index: int, count: int) -> RGB:
    """The centre of vertical stripe ``index`` of ``count``."""
    return at(im, (index + 0.5) / count, 0.5)


def test_variant_names_follow_the_settings() -> None:
    assert [s.name for s in SPECS] == NAMES
    assert [(s.size, s.square) for s in SPECS] == [(1080, False), (612, True), (306, True),
                                                    (150, True)]


# -- the corpus itself -------------------------------------------------------------------------

def test_corpus_is_deterministic() -> None:
    builders: list[Callable[[], bytes]] = [
        lambda: corpus.oriented_jpeg(6),
        lambda: corpus.cmyk_jpeg(True), corpus.grey16_png, lambda: corpus.rgb16_png(True),
        corpus.rgba_png, corpus.transparent_gif, lambda: corpus.animated("WEBP"), corpus.mpo,
        corpus.truncated_jpeg, corpus.corrupt_jpeg, corpus.bomb_png,
        lambda: corpus.noise_jpeg("CMYK"), corpus.ycck_jpeg, corpus.broken_exif_jpeg,
        lambda: corpus.cut_at_scan(corpus.noise_jpeg(progressive=True), 3),
    ]
    for build in builders:
        assert build() == build()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_corpus_orientation_reference(orientation: int) -> None:
    """The corpus is right: Pillow's own exif_transpose turns each stored picture upright, and
    the private metadata the pipeline must strip really is in the input."""
    data = corpus.oriented_jpeg(orientation)
    im = Image.open(io.BytesIO(data))
    assert im.getexif()[0x0112] == orientation
    assert im.getexif().get_ifd(0x8825)[27] == corpus.GPS_METHOD
    assert im.info["comment"] == corpus.COMMENT
    assert im.info["xmp"] == corpus.XMP
    assert im.size == ((400, 300) if orientation < 5 else (300, 400))
    upright = ImageOps.exif_transpose(im)
    assert upright.size == (400, 300)
    assert_upright(upright)
    for private in METADATA_BYTES:
        assert private in data


def test_icc_profiles_load_and_convert_to_srgb() -> None:
    srgb = ImageCms.createProfile("sRGB")
    for icc, mode in [(icc_profiles.adobe_rgb(), "RGB"), (icc_profiles.linear_srgb(), "RGB"),
                      (icc_profiles.cmyk_print(), "CMYK")]:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        assert ImageCms.getProfileDescription(profile).startswith(("Photofarm", "sRGB linear"))
        transform = ImageCms.buildTransform(profile, srgb, mode, "RGB")
        white = Image.new(mode, (1, 1), (0, 0, 0, 0) if mode == "CMYK" else WHITE)
        assert_colour(ImageCms.applyTransform(white, transform).getpixel((0, 0)), WHITE, 1)


# -- orientation and sizes ---------------------------------------------------------------------

LANDSCAPE_400x300: Sizes = {"full": (400, 300), "sq612": (300, 300), "sq306": (300, 300),
                            "sq150": (150, 150)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_metadata_stripped(orientation: int) -> None:
    """Every orientation comes out as the upright 400x300 (never upscaled), in every variant;
    the EXIF (orientation, GPS, camera), the COM comment and the XMP packet are all gone."""
    out = variants(corpus.oriented_jpeg(orientation))
    assert sizes(out) == LANDSCAPE_400x300
    for im in out.values():
        assert_upright(im)


def test_unreadable_exif_leaves_the_picture_as_stored() -> None:
    """A TIFF header Pillow cannot parse (it raised SyntaxError out of exif_transpose): the
    variants are made, unrotated, and still without metadata."""
    data = corpus.broken_exif_jpeg()
    plain = Image.new("RGB", (4, 4))
    plain.info["exif"] = Image.open(io.BytesIO(data)).info["exif"]
    with pytest.raises(SyntaxError):
        ImageOps.exif_transpose(plain)
    out = variants(data)
    assert sizes(out) == {"full": (300, 400), "sq612": (300, 300), "sq306": (300, 300),
                          "sq150": (150, 150)}


def test_phone_photo_rotated_with_draft_decoding() -> None:
    """4032x3024 stored, orientation 6: decoded at half scale, yet full is exactly 810x1080
    (portrait) and upright, the squares exact."""
    out = variants(corpus.large_photo())
    assert sizes(out) == {"full": (810, 1080), "sq612": (612, 612), "sq306": (306, 306),
                          "sq150": (150, 150)}
    for im in out.values():
        assert_upright(im)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_draft_decoding_does_not_change_the_size(fmt: str) -> None:
    """The same 2161x1226 picture gives full 1080x613 (1226 * 1080 / 2161 = 612.72) whether or
    not the decoder drafted it to half scale."""
    out = variants(corpus.draft_rounding(fmt))
    assert sizes(out) == {"full": (1080, 613), "sq612": (612, 612), "sq306": (306, 306),
                          "sq150": (150, 150)}
    assert_upright(out["full"])


# -- colour ------------------------------------------------------------------------------------

STRIPES_180x60: Sizes = {"full": (180, 60), "sq612": (60, 60), "sq306": (60, 60),
                         "sq150": (60, 60)}


def imagecms_srgb(data: bytes) -> Image.Image:
    """What ImageCms itself makes of the input with its embedded profile (perceptual intent)."""
    src = Image.open(io.BytesIO(data))
    profile = ImageCms.ImageCmsProfile(io.BytesIO(src.info["icc_profile"]))
    return ImageCms.profileToProfile(src, profile, ImageCms.createProfile("sRGB"),
                                     outputMode="RGB")


def test_cmyk_without_profile() -> None:
    out = variants(corpus.cmyk_jpeg(with_icc=False))
    assert sizes(out) == STRIPES_180x60
    for i, expected in enumerate([WHITE, (0, 255, 255), (255, 0, 255)]):
        assert_colour(stripe(out["full"], i, 3), expected)
    assert_colour(at(out["sq150"], 0.5, 0.5), (0, 255, 255))  # the middle stripe


def test_cmyk_with_profile_uses_the_profile() -> None:
    """Cyan ink is (0, 158, 224) in sRGB under the embedded profile, not the naive (0, 255, 255);
    paper white stays white."""
    data = corpus.cmyk_jpeg(with_icc=True)
    out = variants(data)
    assert sizes(out) == STRIPES_180x60
    reference = imagecms_srgb(data)
    for i in range(3):
        assert_colour(stripe(out["full"], i, 3), stripe(reference, i, 3))
    assert_colour(stripe(out["full"], 0, 3), WHITE)
    assert_colour(stripe(out["full"], 1, 3), icc_profiles.INKS["C"])
    assert_colour(stripe(out["full"], 2, 3), icc_profiles.INKS["M"])


def test_rgb_with_srgb_profile_keeps_its_numbers() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = variants(corpus.rgb_jpeg_with_profile(srgb))
    for i, colour in enumerate(corpus.RGB_STRIPES):
        assert_colour(stripe(out["full"], i, 3), colour)


@pytest.mark.parametrize("icc", [icc_profiles.adobe_rgb, icc_profiles.linear_srgb],
                         ids=["adobe-rgb", "linear-srgb"])
def test_rgb_with_profile_converted_to_srgb(icc: Callable[[], bytes]) -> None:
    """A wide-gamut green comes out as ImageCms converts it, well away from the naive numbers;
    a profile named "sRGB linear" is not sRGB and mid-grey becomes 188, not 128."""
    data = corpus.rgb_jpeg_with_profile(icc())
    out = variants(data)
    assert sizes(out) == STRIPES_180x60
    reference = imagecms_srgb(data)
    naive = Image.open(io.BytesIO(data)).convert("RGB")
    differs = 0
    for i in range(3):
        got = stripe(out["full"], i, 3)
        assert_colour(got, stripe(reference, i, 3))
        naive_colour = stripe(naive, i, 3)
        differs += max(abs(a - b) for a, b in zip(got, naive_colour, strict=True)) > 40
    assert differs >= 1  # the test can tell a converted picture from an unconverted one


# -- greyscale, 1-bit, 16-bit ------------------------------------------------------------------

def test_greyscale_and_one_bit() -> None:
    out = variants(corpus.grey_jpeg())
    assert sizes(out) == STRIPES_180x60
    for i, grey in enumerate(corpus.GREYS):
        assert_colour(stripe(out["full"], i, 3), (grey,) * 3, 4)
    out = variants(corpus.one_bit_png())
    assert sizes(out) == {"full": (120, 60), "sq612": (60, 60), "sq306": (60, 60),
                          "sq150": (60, 60)}
    assert_colour(stripe(out["full"], 0, 2), (0, 0, 0), 4)
    assert_colour(stripe(out["full"], 1, 2), WHITE, 4)


def test_sixteen_bit_grey_scaled_not_clipped() -> None:
    """I;16 values 4096, 32768, 65535 become 16, 128, 255: mid-grey stays mid-grey."""
    out = variants(corpus.grey16_png())
    assert sizes(out) == STRIPES_180x60
    for i, grey in enumerate([16, 128, 255]):
        assert_colour(stripe(out["full"], i, 3), (grey,) * 3, 4)


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb16", "rgba16"])
def test_sixteen_bit_colour(alpha: bool) -> None:
    """16-bit RGB(A) keeps its high bytes; a transparent 16-bit pixel is white, whatever is
    under it."""
    out = variants(corpus.rgb16_png(alpha))
    assert sizes(out) == STRIPES_180x60
    expected = [(128, 64, 255), (128, 128, 128), WHITE if alpha else (255, 0, 0)]
    for i, colour in enumerate(expected):
        assert_colour(stripe(out["full"], i, 3), colour)


# -- transparency ------------------------------------------------------------------------------

@pytest.mark.parametrize(("build", "expected"), [
    (corpus.rgba_png, [BLUE, WHITE, (127, 127, 127)]),
    (corpus.la_png, [(50, 50, 50), WHITE]),
    (corpus.palette_png_trns, [GREEN, WHITE]),
    (corpus.transparent_gif, [GREEN, WHITE]),
    (lambda: corpus.png_colour_key("RGB"), [GREEN, WHITE]),
    (lambda: corpus.png_colour_key("L"), [(50, 50, 50), WHITE]),
], ids=["rgba", "la", "p-trns", "gif", "rgb-colour-key", "l-colour-key"])
def test_transparency_flattened_onto_white(build: Callable[[], bytes],
                                           expected: list[RGB]) -> None:
    """Transparent pixels come out white, never the junk colour stored under them; opaque
    pixels keep their colour; half alpha is half way to white."""
    out = variants(build())
    count = len(expected)
    assert out["full"].size == (60 * count, 60)
    for name in NAMES[1:]:
        assert out[name].size == (60, 60)
    for i, colour in enumerate(expected):
        assert_colour(stripe(out["full"], i, count), colour)
    # The squares are the centre stripe (of three) or straddle the two.
    if count == 3:
        assert_colour(at(out["sq150"], 0.5, 0.5), expected[1])
    else:
        assert_colour(at(out["sq150"], 0.25, 0.5), expected[0])
        assert_colour(at(out["sq150"], 0.75, 0.5), expected[1])


# -- several frames ----------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: corpus.animated("GIF"),
                                   lambda: corpus.animated("WEBP"),
                                   lambda: corpus.animated("PNG"), corpus.mpo],
                         ids=["gif", "webp", "apng", "mpo"])
def test_first_frame_only(build: Callable[[], bytes]) -> None:
    data = build()
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) > 1
    out = variants(data)
    assert sizes(out) == {"full": (120, 90), "sq612": (90, 90), "sq306": (90, 90),
                          "sq150": (90, 90)}
    for im in out.values():
        for point in QUADRANT_AT.values():
            assert_colour(at(im, *point), RED)


def test_heic_from_an_iphone() -> None:
    """HEIC stored rotated (orientation 6, as the irot transform), with EXIF and XMP: upright,
    exact sizes, no metadata."""
    try:
        data = corpus.heic()
    except (OSError, RuntimeError, ValueError) as exc:  # pragma: no cover - wheel without x265
        pytest.skip(f"pillow-heif cannot encode HEIC here: {exc}")
    assert Image.open(io.BytesIO(data)).format == "HEIF"
    assert b"http://ns.adobe.com/xap" in data and b"GPS" in data
    out = variants(data)
    assert sizes(out) == LANDSCAPE_400x300
    for im in out.values():
        assert_upright(im)


# -- refusals ----------------------------------------------------------------------------------

NOT_ACCEPTED = r"^not an image in an accepted format \(JPEG, .*\)$"


@pytest.mark.parametrize(("build", "reason"), [
    (lambda: corpus.EMPTY, r"^empty file \(0 bytes\)$"),
    (lambda: corpus.TEXT, NOT_ACCEPTED),
    (lambda: corpus.other_format("TIFF"), NOT_ACCEPTED),
    (lambda: corpus.other_format("BMP"), NOT_ACCEPTED),
    (corpus.truncated_jpeg, r"^truncated or corrupt image data: Premature end of JPEG file$"),
    (corpus.truncated_png, r"^truncated or corrupt image data: image file is truncated$"),
    (corpus.corrupt_jpeg,
     r"^truncated or corrupt image data: Invalid JPEG file structure: two SOF markers$"),
    # Pillow's own check fires first inside Image.open; the reason names the farm's limit.
    (corpus.bomb_png, r"^decompression bomb refused: 900000000 pixels, over the limit of "
                      r"50000000 pixels \(FARM_MAX_PIXELS\)$"),
    (corpus.bomb_png_400mpx, r"^decompression bomb refused: 400000000 pixels, over the limit of "
                             r"50000000 pixels \(FARM_MAX_PIXELS\)$"),
    (corpus.bomb_png_pillow_warns, r"^decompression bomb refused: 100000000 pixels, over the "
                                   r"limit of 50000000 pixels \(FARM_MAX_PIXELS\)$"),
    (corpus.over_limit_png, r"^image is 8000x8000 \(64000000 pixels\), over the limit of "
                            r"50000000 pixels \(FARM_MAX_PIXELS\)$"),
], ids=["empty", "text", "tiff", "bmp", "truncated-jpeg", "truncated-png", "corrupt-jpeg",
        "bomb-900mpx", "bomb-400mpx", "bomb-100mpx", "over-farm-limit"])
def test_refused_with_reason(build: Callable[[], bytes], reason: str) -> None:
    data = build()
    with pytest.raises(ImageRefused, match=reason) as refused:
        make_variants(data, SPECS)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("build", [corpus.bomb_png, corpus.bomb_png_400mpx,
                                   corpus.bomb_png_pillow_warns, corpus.over_limit_png])
def test_bomb_refused_fast_from_the_header(build: Callable[[], bytes]) -> None:
    data = build()
    assert len(data) < 200  # a header and nothing to decode
    started = time.perf_counter()
    with pytest.raises(ImageRefused):
        make_variants(data, SPECS)
    assert time.perf_counter() - started < 0.05


def test_pillow_bomb_warning_refuses_even_under_a_higher_farm_limit() -> None:
    """Under the farm's limit, Pillow's warning still refuses, and its reason is Pillow's."""
    with pytest.raises(ImageRefused, match=r"^decompression bomb refused: Image size "
                                           r"\(100000000 pixels\) exceeds limit of 89478485"):
        make_variants(corpus.bomb_png_pillow_warns(), SPECS, max_pixels=500_000_000)


def test_bomb_reason_quotes_the_configured_limit() -> None:
    """The 400 Mpx header is refused quoting FARM_MAX_PIXELS as set, not Pillow's 178,956,970."""
    s = Settings(max_pixels=60_000_000)
    with pytest.raises(ImageRefused, match=re.escape(
            "decompression bomb refused: 400000000 pixels, over the limit of 60000000 pixels "
            "(FARM_MAX_PIXELS)")):
        make_variants(corpus.bomb_png_400mpx(), SPECS, max_pixels=s.max_pixels)


def test_farm_limit_holds_without_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageRefused, match=re.escape(
            "image is 30000x30000 (900000000 pixels), over the limit of 50000000 pixels "
            "(FARM_MAX_PIXELS)")):
        make_variants(corpus.bomb_png(), SPECS)


def test_max_pixels_is_the_callers() -> None:
    with pytest.raises(ImageRefused, match=re.escape(
            "image is 400x300 (120000 pixels), over the limit of 100000 pixels "
            "(FARM_MAX_PIXELS)")):
        make_variants(corpus.oriented_jpeg(1), SPECS, max_pixels=100_000)


def test_jpeg_with_stray_bytes_between_segments_is_still_made() -> None:
    """Some cameras leave bytes between header segments; libjpeg warns, every pixel is right."""
    data = corpus.oriented_jpeg(1)
    end_of_app0 = 4 + int.from_bytes(data[4:6], "big")
    assert data[2:4] == b"\xff\xe0"  # JFIF APP0 first
    stray = data[:end_of_app0] + b"\x12\x34\x56" + data[end_of_app0:]
    assert [r.data for r in make_variants(stray, SPECS)] == [
        r.data for r in make_variants(data, SPECS)]


def test_jpeg_ending_early_is_refused() -> None:
    # libjpeg only warns on an early EOI (Pillow would decode the rest as flat grey).
    with pytest.raises(ImageRefused, match=r"^truncated or corrupt image data: Corrupt JPEG "
                                           r"data: premature end of data segment$"):
        make_variants(corpus.early_eoi_jpeg(), SPECS)


# -- a truncation behind a harmless warning ----------------------------------------------------
# libjpeg reports only its first warning. Each of these was stored half grey, record ready,
# before the farm tidied the harmless bytes away and decoded CMYK strictly too.

PREMATURE_END = (r"^truncated or corrupt image data: Corrupt JPEG data: premature end of data "
                 r"segment$")
C = corpus


@pytest.mark.parametrize("build", [
    lambda: C.cut_and_closed(C.stray_bytes_before_dqt(C.noise_jpeg())),
    lambda: C.cut_and_closed(C.stray_bytes_before_dqt(C.noise_jpeg("L"))),
    lambda: C.cut_and_closed(C.stray_bytes_before_dqt(C.noise_jpeg(progressive=True))),
    lambda: C.cut_and_closed(C.future_jfif(C.noise_jpeg())),
    lambda: C.cut_and_closed(C.noise_jpeg("CMYK")),
    lambda: C.cut_and_closed(C.stray_bytes_before_dqt(C.noise_jpeg("CMYK"))),
], ids=["stray-bytes-before-dqt", "grey-stray-bytes", "progressive-stray-bytes",
        "future-jfif-revision", "cmyk", "cmyk-stray-bytes"])
def test_cut_at_60_percent_and_closed_is_refused(build: Callable[[], bytes]) -> None:
    data = build()
    assert data.endswith(b"\xff\xd9")
    Image.open(io.BytesIO(data)).load()  # Pillow alone takes it: the missing rows come out grey
    with pytest.raises(ImageRefused, match=PREMATURE_END):
        make_variants(data, SPECS)


@pytest.mark.parametrize(("build", "harmless"), [
    (C.noise_jpeg, C.stray_bytes_before_dqt),
    (lambda: C.noise_jpeg("CMYK"), C.stray_bytes_before_dqt),
    (lambda: C.noise_jpeg(progressive=True), C.stray_bytes_before_dqt),
    (C.noise_jpeg, C.future_jfif),
    (C.noise_jpeg, C.garbage_before_end),
    (lambda: C.noise_jpeg(progressive=True), C.garbage_before_end),
    (C.noise_jpeg, lambda data: data + b"trailing garbage" * 8),
    (C.mpo, C.stray_bytes_before_dqt),
], ids=["stray-bytes", "cmyk-stray-bytes", "progressive-stray-bytes", "future-jfif-revision",
        "garbage-before-end-marker", "progressive-garbage-before-end-marker",
        "trailing-garbage", "mpo-stray-bytes"])
def test_harmless_bytes_alone_leave_every_pixel_right(build: Callable[[], bytes],
                                                      harmless: Callable[[bytes], bytes]) -> None:
    """The same variants, byte for byte, as from the file without them."""
    data = build()
    assert [r.data for r in make_variants(harmless(data), SPECS)] == [
        r.data for r in make_variants(data, SPECS)]


def test_stray_bytes_between_progressive_scans_are_refused() -> None:
    """Bytes after a scan's data cannot be told from it, so they cannot be tidied away, and
    libjpeg would not report a truncation after them: refused, cut short or not."""
    whole = C.stray_bytes_between_scans(C.noise_jpeg(progressive=True))
    for data in (whole, C.cut_and_closed(whole)):
        with pytest.raises(ImageRefused, match=r"^truncated or corrupt image data: Corrupt JPEG "
                                               r"data: \d+ extraneous bytes before marker 0xc4$"):
            make_variants(data, SPECS)


@pytest.mark.parametrize("build", [lambda: C.noise_jpeg("CMYK"), C.ycck_jpeg],
                         ids=["cmyk", "ycck"])
def test_cmyk_decoded_as_pillow_decodes_it(build: Callable[[], bytes]) -> None:
    """libjpeg-turbo's CMYK (and YCCK) read with Pillow's Adobe inversion: the same numbers."""
    data = build()
    reference = Image.open(io.BytesIO(data))
    reference.load()
    decoded = decode_jpeg(data, Image.open(io.BytesIO(data)), 10_000, 10_000)  # full scale
    assert decoded is not None and decoded.mode == "CMYK"
    assert decoded.tobytes() == reference.tobytes()


@pytest.mark.parametrize("scans", range(1, 10))
def test_progressive_jpeg_cut_at_a_scan_boundary_is_refused(scans: int) -> None:
    """No warning at all from libjpeg (a progressive file may stop after any scan), but the
    coefficients of the missing scans come out as zeros: blurred, discoloured, refused."""
    whole = C.noise_jpeg(progressive=True)
    assert whole.count(b"\xff\xda") == 10
    data = C.cut_at_scan(whole, scans)
    Image.open(io.BytesIO(data)).load()  # Pillow alone takes it
    with pytest.raises(ImageRefused, match=r"^truncated or corrupt image data: scans missing "
                                           r"\(the file ends at a scan boundary\)$"):
        make_variants(data, SPECS)


def frame(sof: int, scans: list[bytes]) -> bytes:
    """A hand-made JPEG skeleton: three components, then the given SOS segments, each followed
    by two bytes of scan data, then the end marker."""
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    header = b"\xff\xd8" + bytes([0xFF, sof]) + b"\x00\x11\x08\x00\x10\x00\x10\x03" + components
    return header + b"".join(b"\xff\xda" + scan + b"\x12\x34" for scan in scans) + b"\xff\xd9"


SOS_ALL = b"\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"  # Y, Cb, Cr; 0-63; Al 0


def sos_one(component: int) -> bytes:
    return b"\x00\x08\x01" + bytes([component]) + b"\x00\x00\x3f\x00"


@pytest.mark.parametrize(("data", "complete"), [
    (frame(0xC0, [SOS_ALL]), True),
    (frame(0xC0, [sos_one(1), sos_one(2), sos_one(3)]), True),  # one scan per component
    (frame(0xC0, [sos_one(1)]), False),  # ends after the first component's scan
    (frame(0xC2, [b"\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x00\x00\x01"]), False),  # DC, Al 1
    (frame(0xC3, [b"\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x01\x00\x00"]), True),  # lossless
], ids=["baseline", "one-scan-per-component", "components-missing", "progressive-dc-only",
        "lossless"])
def test_scans_complete(data: bytes, complete: bool) -> None:
    assert scans_complete(data) is complete
