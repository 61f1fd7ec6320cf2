"""The drain benchmark runs end to end at a tiny size (its own Redis; the farm's, Celery's and
Dramatiq's real workers) and prints its figures in the agreed format, ratios last."""

from __future__ import annotations

import os
import re

import pytest

from bench import drain

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(r"farm / celery [\d.]+, farm / dramatiq [\d.]+ \(goal: >= 1 and >= 0\.5\)")
RATE = re.compile(r"(farm|celery|dramatiq) +median +[\d,]+ tasks/s +\(min [\d,]+, max [\d,]+, "
                  r"1 rounds of 60\)")
COMMANDS = re.compile(r"(farm|celery|dramatiq) +Redis commands per task +([\d.]+) ")


def test_drain_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    env_before = {k: v for k, v in os.environ.items() if k.startswith("FARM_")}
    drain.main(["--tasks", "60", "--rounds", "1", "--profile", "--top", "3"])
    out = capsys.readouterr().out.splitlines()
    assert LAST_LINE.fullmatch(out[-1]), out
    assert sorted(m[1] for line in out if (m := RATE.fullmatch(line))) == [
        "celery", "dramatiq", "farm"], out
    per_task = {m[1]: float(m[2]) for line in out if (m := COMMANDS.match(line))}
    # Every system talked to Redis for its tasks: the drain was measured, not an empty queue.
    assert set(per_task) == {"celery", "dramatiq", "farm"} and min(per_task.values()) >= 1, out
    # The profile of the farm's worker found its task base and the per-task phases.
    assert any(line.startswith("farm, cProfile of one solo-pool worker draining 60")
               for line in out), out
    assert any(line.strip().startswith("phase") and "task base (FarmTask.__call__)" in line
               for line in out), out
    # The workers ran with the benchmark's own settings; this process's are untouched.
    assert {k: v for k, v in os.environ.items() if k.startswith("FARM_")} == env_before
