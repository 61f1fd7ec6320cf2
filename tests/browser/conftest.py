"""Browser tests: Playwright's Python client driving Debian's chromium (never a browser
Playwright downloads). Skipped, with the reason, where /usr/bin/chromium is missing
(`apt-get install chromium`; .ci/run installs it). Screenshots go to $PYTEST_ARTIFACTS, else
tmp/test-artifacts/ in the checkout (gitignored)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("PHOTOFARM_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]


# Module scope, not session: Playwright's sync API runs an event loop in this thread while it
# is open, and later tests' asyncio.run() (the APNs tests) must not find one running.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (Debian's package; "
                    "nothing downloads a browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright passes --no-sandbox itself unless told otherwise (CI runs as root).
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("PYTEST_ARTIFACTS") or ROOT / "tmp" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
