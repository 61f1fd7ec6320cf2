"""The demo's sample uploads, made on the spot: the kinds of file phones actually send."""

from __future__ import annotations

import io

from PIL import Image


def _picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    im = Image.merge("RGB", (
        Image.linear_gradient("L").resize(size),
        Image.effect_mandelbrot(size, (-2.2, -1.2, 0.8, 1.2), 64),
        Image.radial_gradient("L").resize(size),
    ))
    return im.convert(mode) if mode != "RGB" else im


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def sample_uploads() -> dict[str, tuple[bytes, str]]:
    """storage key -> (bytes, content type)."""
    rotated = Image.Exif()
    rotated[0x0112] = 6  # stored sideways, as a phone held upright writes it
    transparent = _picture((1200, 900), "RGBA")
    transparent.putalpha(Image.radial_gradient("L").resize((1200, 900)))
    whole = _save(_picture((2000, 1500)), "JPEG", quality=90)
    return {
        "originals/101.jpg": (_save(_picture((4032, 3024)), "JPEG", quality=90,
                                    exif=rotated.tobytes()), "image/jpeg"),
        "originals/102.png": (_save(transparent, "PNG"), "image/png"),
        "originals/103.jpg": (_save(_picture((1536, 2048)), "JPEG", quality=88), "image/jpeg"),
        "originals/104.gif": (_save(_picture((300, 200), "P"), "GIF"), "image/gif"),
        "originals/105.jpg": (_save(_picture((2000, 1500), "CMYK"), "JPEG"), "image/jpeg"),
        # A broken upload: the JPEG cut off half-way, as a dropped connection leaves it.
        "originals/106.jpg": (whole[: len(whole) // 2], "image/jpeg"),
    }
