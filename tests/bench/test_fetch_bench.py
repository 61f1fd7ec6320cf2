"""The reliable-fetch benchmark runs end to end at tiny sizes and prints its ratios last."""

from __future__ import annotations

import re

import pytest

from bench import fetch

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(r"reliable / stock: publish [\d.]+, drain [\d.]+, idle wake-up [\d.]+x")


def test_fetch_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    fetch.main(["--messages", "200", "--rounds", "2", "--wakes", "3"])
    out = capsys.readouterr().out.splitlines()
    assert LAST_LINE.fullmatch(out[-1]), out
    assert sum(line.startswith("drain ") for line in out) == 2
