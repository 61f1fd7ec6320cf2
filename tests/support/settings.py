"""This test process's settings pointed somewhere else for one fixture's life."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from config.settings import get_settings


@contextmanager
def settings_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Set ``env`` (FARM_* variables) and re-read the settings; undo both after. Yields ``env``,
    the same variables to give worker processes."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        yield env
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
