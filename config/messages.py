"""Task arguments are small JSON: ids, keys, short strings. Never bytes, never objects."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


class ArgumentError(ValueError):
    """Task arguments that must not go through the broker."""


def check_small_json(task: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> None:
    try:
        encoded = json.dumps([list(args), dict(kwargs)], allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{task}: arguments are not plain JSON ({exc})") from None
    if len(encoded) > limit:
        raise ArgumentError(
            f"{task}: arguments are {len(encoded)} bytes of JSON, over the {limit}-byte limit "
            "(pass ids and storage keys, not content)"
        )
