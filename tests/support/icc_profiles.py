"""Hand-built ICC v2 profiles, as bytes, for the imaging corpus.

Pillow's ImageCms.createProfile makes only sRGB, LAB and XYZ, and the tests take no ICC files from
the system, so the wide-gamut RGB and CMYK profiles a camera or a print workflow embeds are built
here from the ICC.1:2001-04 (v2) layout: a 128-byte header, a tag table, and the tag data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

D50 = (0.9642, 1.0, 0.8249)  # the PCS illuminant
# Adobe RGB (1998) primaries adapted to D50, as its own profile stores them.
ADOBE_RGB_D50 = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
                 (0.14919, 0.06322, 0.74457))
SRGB_D50 = ((0.43607, 0.22249, 0.01392), (0.38515, 0.71687, 0.09708),
            (0.14307, 0.06061, 0.71410))
# The sRGB colour of each ink printed solid on white paper, for the CMYK model.
INKS = {"C": (0, 158, 224), "M": (236, 0, 140), "Y": (255, 241, 0), "K": (35, 31, 32)}


def s15f16(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(s15f16(v) for v in xyz)


def curv_gamma(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # ASCII part, an empty Unicode part, an empty ScriptCode part (67 bytes of filler).
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def build_profile(device_class: bytes, colour_space: bytes, pcs: bytes,
                  tags: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Header, tag table and 4-byte aligned tag data; identical tag bodies are not shared."""
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, body = [], b""
    for sig, data in tags:
        entries.append(struct.pack(">4sII", sig, offset + len(body), len(data)))
        body += data + bytes(-len(data) % 4)
    size = offset + len(body)
    header = (struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, device_class, colour_space,
                          pcs)
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # creation date
              + b"acsp" + bytes(4 + 4 + 4 + 4 + 8)  # platform, flags, maker, model, attributes
              + struct.pack(">I", 0)  # perceptual
              + b"".join(s15f16(v) for v in D50)
              + b"test" + bytes(16 + 28))  # creator, profile id, reserved
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body


def rgb_matrix_profile(description: str, colorants: Sequence[Sequence[float]],
                       gamma: float) -> bytes:
    """A display (mntr) matrix/TRC RGB profile: D50-adapted colorants and one gamma curve."""
    trc = curv_gamma(gamma)
    return build_profile(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", desc_tag(description)),
        (b"cprt", text_tag("No copyright, use freely")),
        (b"wtpt", xyz_tag(D50)),
        (b"rXYZ", xyz_tag(colorants[0])),
        (b"gXYZ", xyz_tag(colorants[1])),
        (b"bXYZ", xyz_tag(colorants[2])),
        (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc),
    ])


def adobe_rgb() -> bytes:
    """Adobe RGB (1998) compatible: wide-gamut primaries, gamma 2.2 (563/256)."""
    return rgb_matrix_profile("Photofarm test wide gamut (Adobe RGB 1998 compatible)",
                              ADOBE_RGB_D50, 563 / 256)


def linear_srgb() -> bytes:
    """sRGB primaries with a linear (gamma 1.0) curve, named as such tools name it."""
    return rgb_matrix_profile("sRGB linear (gamma 1.0)", SRGB_D50, 1.0)


def _linear(v: float) -> float:
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _lab(xyz: Sequence[float]) -> tuple[float, float, float]:
    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29
    fx, fy, fz = (f(v / w) for v, w in zip(xyz, D50, strict=True))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def cmyk_lab(c: float, m: float, y: float, k: float) -> tuple[float, float, float]:
    """A simple subtractive model: each ink filters linear light by its solid colour."""
    linear = [1.0, 1.0, 1.0]
    for amount, ink in zip((c, m, y, k), "CMYK", strict=True):
        for i in range(3):
            linear[i] *= 1 - amount + amount * _linear(INKS[ink][i] / 255)
    xyz = [sum(linear[j] * SRGB_D50[j][i] for j in range(3)) for i in range(3)]
    return _lab(xyz)


def lut16_cmyk_to_lab(grid: int) -> bytes:
    """An mft2 (lut16Type) A2B table: identity curves around a grid**4 CLUT to v2 16-bit Lab."""
    ramp = struct.pack(">2H", 0, 0xFFFF)
    clut = bytearray()
    steps = [i / (grid - 1) for i in range(grid)]
    for c in steps:  # the first input channel varies slowest
        for m in steps:
            for y in steps:
                for k in steps:
                    lab_l, lab_a, lab_b = cmyk_lab(c, m, y, k)
                    clut += struct.pack(">3H", *(max(0, min(0xFFFF, round(v))) for v in (
                        lab_l * 0xFF00 / 100, (lab_a + 128) * 256, (lab_b + 128) * 256)))
    identity = b"".join(s15f16(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return (b"mft2" + bytes(4) + struct.pack(">4B", 4, 3, grid, 0) + identity
            + struct.pack(">2H", 2, 2) + ramp * 4 + bytes(clut) + ramp * 3)


def cmyk_print() -> bytes:
    """A CMYK output (prtr) profile whose A2B0 maps ink amounts to Lab."""
    return build_profile(b"prtr", b"CMYK", b"Lab ", [
        (b"desc", desc_tag("Photofarm test CMYK press")),
        (b"cprt", text_tag("No copyright, use freely")),
        (b"wtpt", xyz_tag(D50)),
        (b"A2B0", lut16_cmyk_to_lab(5)),
    ])
