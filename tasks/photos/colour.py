"""Colour management: an embedded ICC profile's transform to sRGB, made once per profile and
process (LittleCMS through Pillow's ImageCms), and skipped for profiles that are sRGB already.

The cache is a plain ``lru_cache`` of pure values: a transform holds no socket or thread, so a
prefork child may use its parent's copies (no ProcessLocal needed).
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from typing import cast

from PIL import Image, ImageCms

_SRGB = ImageCms.createProfile("sRGB")


def srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached transform from the embedded profile to sRGB; None when it is sRGB already or
    unusable (a broken profile is not worth refusing a photo over: the pixels are converted
    without it)."""
    return _transform(hashlib.sha1(icc).digest(), icc, mode)


@lru_cache(maxsize=32)
def _transform(digest: bytes, icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        transform = ImageCms.buildTransform(profile, _SRGB, mode, "RGB",
                                            renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    if mode == "RGB" and _is_identity(transform):
        return None  # sRGB already, whatever its name says: skip the work
    return transform


# Black, white, grey, the primaries and two mixed colours: a profile that maps all of them to
# themselves (within rounding) is sRGB for every purpose here.
_PROBE = Image.frombytes("RGB", (8, 1), bytes([0, 0, 0, 255, 255, 255, 128, 128, 128, 255, 0, 0,
                                               0, 255, 0, 0, 0, 255, 64, 160, 32, 200, 100, 220]))


def _is_identity(transform: ImageCms.ImageCmsTransform) -> bool:
    out = cast(Image.Image, ImageCms.applyTransform(_PROBE, transform))  # None only in place
    return all(abs(a - b) <= 2 for a, b in zip(out.tobytes(), _PROBE.tobytes(), strict=True))
