"""The fan-out benchmark runs end to end at a small size (its own servers and real workers, in a
process of its own: it rewrites its environment) and prints its figures last."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"[\d,]+ followers/s per process \((?:[\d.]+ of pipelined LPUSH|no LPUSH "
                       r"baseline), [\d.]+ of the bare write loop's [\d,]+/s; .*, "
                       r"[\d.]+ s for 20,000 followers end to end .*, [\d.]+ bytes/entry .*")


def test_fanout_benchmark_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.fanout", "--followers", "20000",
                          "--lpush-requests", "20000"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines
    assert any(line.startswith("one chunk-writing process: ") and "(20000 written)" in line
               for line in lines), lines
