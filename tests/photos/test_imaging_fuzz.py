"""Property tests over the image entry point (make_variants, what photos.process and `farm resize`
call) with mutated JPEG and PNG bytes: byte flips, truncations, insertions, deletions and spliced
markers or chunks. Whatever the bytes, the outcome is the variants or ImageRefused with a
one-line reason: no other exception, no hang.

Small sources keep a case to a few milliseconds (the slowest about 0.2 s): 4 x 750 cases run in
about 12 s. They are derandomized, so CI runs the same cases every time; for a longer search,
with new cases each run (how the unreadable-EXIF crash was found):

    FUZZ_EXAMPLES=20000 FUZZ_RANDOM=1 .venv/bin/python -m pytest tests/photos/test_imaging_fuzz.py
"""

from __future__ import annotations

import faulthandler
import io
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from config.settings import Settings
from tasks.photos.imaging import ImageRefused, make_variants, variant_specs
from tests.support import corpus

# Pillow warns about the mangled EXIF it skips; the outcome is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
SPECS = variant_specs(Settings())
LIMITS = {s.name: s.size for s in SPECS}
# Per case: a decode of a small source takes milliseconds; a header mutated to claim a picture
# near the pixel limit costs a large allocation, still far below this.
DEADLINE = timedelta(seconds=3)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "750"))
# Whole-test watchdog: a decoder stuck in C never returns to Hypothesis' deadline check, so the
# process dumps every thread's stack and exits instead of hanging CI.
WATCHDOG_SECONDS = max(240, EXAMPLES // 5)
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Markers a JPEG parser must cope with anywhere: SOI, EOI, a restart, SOS and SOF headers with
# odd lengths or sizes, a Huffman and a quantisation table, a restart interval, EXIF, a comment,
# a bare 0xFF run, stuffing.
JPEG_SPLICES = [
    b"\xff\xd8", b"\xff\xd9", b"\xff\xd0", b"\xff\xd7", b"\xff\xff\xff", b"\xff\x00",
    b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",
    b"\xff\xc0\x00\x0b\x08\xff\xff\xff\xff\x01\x01\x11\x00",
    b"\xff\xc2\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01",
    b"\xff\xc4\x00\x14\x00" + bytes(16) + b"\x00",
    b"\xff\xdb\x00\x43\x00" + bytes(64),
    b"\xff\xdd\x00\x04\x00\x01",
    b"\xff\xe1\x00\x10Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08",
    b"\xff\xfe\x00\x05hi\x00",
    b"\xff\xe0\x00\x10JFIF\x00\x03\x01\x00\x00\x01\x00\x01\x00\x00",
]


def png_splices() -> list[bytes]:
    """Chunks with good CRCs, so the PNG reader goes past its checksum into their content."""
    chunk = corpus.png_chunk
    return [
        chunk(b"IHDR", bytes.fromhex("0000003000000020") + b"\x08\x06\x00\x00\x00"),
        chunk(b"IHDR", bytes.fromhex("00001388000013880803000000")),  # 5000x5000 palette
        chunk(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01"),  # an empty zlib stream
        chunk(b"IDAT", bytes(20)),
        chunk(b"IEND", b""),
        chunk(b"PLTE", bytes(9)),
        chunk(b"tRNS", b"\x00\x00"),
        chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
                       b"\x00\x09\x00\x00"),
        chunk(b"iCCP", b"icc\x00\x00" + b"\x78\x9c" + bytes(8)),
        chunk(b"acTL", b"\x00\x00\x00\x02\x00\x00\x00\x00"),
        chunk(b"zTXt", b"k\x00\x00\x78\x9c\x03\x00\x00\x00\x00\x01"),
        b"\x89PNG\r\n\x1a\n",
    ]


def small(mode: str) -> Image.Image:
    """48x32: the corpus's four quadrants with noise over them, so the data is not all runs."""
    im = Image.blend(corpus.upright((48, 32)), corpus.noise((48, 32)), 0.3)
    return im.convert(mode)


def save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


@cache
def sources() -> dict[str, bytes]:
    return {
        "jpeg-baseline": save(small("RGB"), "JPEG", quality=90),
        "jpeg-progressive": save(small("RGB"), "JPEG", progressive=True),
        "jpeg-grey-restarts": save(small("L"), "JPEG", restart_marker_blocks=1),
        "jpeg-cmyk": save(small("CMYK"), "JPEG"),
        "jpeg-exif-444": save(small("RGB"), "JPEG", subsampling=0,
                              exif=corpus.private_exif(6)),
        "png-rgb": save(small("RGB"), "PNG"),
        "png-rgba": save(small("RGBA"), "PNG"),
        "png-palette": save(small("P"), "PNG", transparency=0),
        "png-16bit": corpus.rgb16_png(True, size=16),
        "png-interlaced": save(small("RGB"), "PNG", interlace=1),
    }


# One mutation: what to do, where (a fraction of the length), and its bytes: the XOR mask of a
# flip, what an insertion or a splice puts in, as many bytes as a deletion takes out.
Mutation = tuple[str, float, bytes]


def mutations(splices: list[bytes]) -> st.SearchStrategy[list[Mutation]]:
    where = st.floats(0.01, 1)  # not 0.0 every other time: a cut at 0 leaves no image
    one = st.one_of(
        st.tuples(st.just("flip"), where, st.binary(min_size=1, max_size=1).filter(any)),
        st.tuples(st.sampled_from(["truncate", "truncate-closed"]), where, st.just(b"")),
        st.tuples(st.sampled_from(["insert", "delete"]), where, st.binary(min_size=1,
                                                                          max_size=24)),
        st.tuples(st.just("insert"), where, st.sampled_from(splices)),
    )
    return st.lists(one, min_size=1, max_size=4)


def mutate(data: bytes, changes: list[Mutation], end: bytes, keep: int) -> bytes:
    """``data`` changed; its first ``keep`` bytes (the signature) stay, or nearly every case
    would be refused as "not an image" before any parser ran."""
    buf = bytearray(data)
    for kind, where, payload in changes:
        pos = keep + int(where * (len(buf) - keep))
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= payload[0]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "truncate-closed":  # cut, then "repaired" with the format's end
            buf[pos:] = end
        elif kind == "insert":
            buf[pos:pos] = payload
        elif kind == "delete":
            del buf[pos:pos + len(payload)]
    return bytes(buf)


def check_outcome(data: bytes) -> None:
    """The variants, each a JPEG no larger than its spec, or a one-line refusal."""
    try:
        rendered = make_variants(data, SPECS)
    except ImageRefused as refused:
        reason = str(refused)
        assert reason and reason.isprintable() and "\n" not in reason
        return
    assert [r.name for r in rendered] == list(LIMITS)
    for r in rendered:
        assert 1 <= max(r.width, r.height) <= LIMITS[r.name]
        im = Image.open(io.BytesIO(r.data))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (r.width, r.height))


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_sources_are_made_whole() -> None:
    for data in sources().values():
        check_outcome(data)
        make_variants(data, SPECS)  # none of them is refused unmutated


JPEGS = [name for name in sources() if name.startswith("jpeg")]
PNGS = [name for name in sources() if name.startswith("png")]


def fuzz(names: list[str], splices: list[bytes], end: bytes, keep: int) -> Callable[[], None]:
    @FUZZ
    @given(name=st.sampled_from(names), changes=mutations(splices))
    def run(name: str, changes: list[Mutation]) -> None:
        check_outcome(mutate(sources()[name], changes, end, keep))

    return run


@pytest.mark.parametrize("names", [JPEGS[:3], JPEGS[3:]], ids=["rgb-grey", "cmyk-exif"])
def test_mutated_jpeg_is_made_or_refused(names: list[str]) -> None:
    fuzz(names, JPEG_SPLICES, b"\xff\xd9", keep=2)()


@pytest.mark.parametrize("names", [PNGS[:3], PNGS[3:]], ids=["rgb-palette", "16bit-interlaced"])
def test_mutated_png_is_made_or_refused(names: list[str]) -> None:
    fuzz(names, png_splices(), corpus.png_chunk(b"IEND", b""), keep=8)()
