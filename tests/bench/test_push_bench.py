"""The push benchmark runs end to end at tiny sizes (its own Redis, the stand-in in its own
process) and prints its figures in the agreed format, leaving this process's settings alone."""

from __future__ import annotations

import os
import re

import pytest

from bench import push
from config.settings import get_settings

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(r"push: many streams [\d,]+/s, one at a time [\d,]+/s, ratio [\d.]+x "
                       r"\(goal >= 10,000/s from one process\)")


def test_push_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    env_before = {k: v for k, v in os.environ.items() if k.startswith("FARM_")}
    assert push.main(["--batch", "200", "--rounds", "1", "--single", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert LAST_LINE.fullmatch(out[-1]), out
    standin_pid = int(re.search(r"stand-in: pid (\d+) \(client: pid (\d+)\)", out[0])[1])
    assert standin_pid != os.getpid()
    assert any(line.startswith("many streams CPU per notification: client ") for line in out)
    # The benchmark's own FARM_* settings are gone again.
    assert {k: v for k, v in os.environ.items() if k.startswith("FARM_")} == env_before
    assert get_settings().redis_url == os.environ["FARM_REDIS_URL"]


def test_push_benchmark_fails_loudly(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A failure is not throughput: a non-200 answer makes the run exit 1 with no figure."""
    real = push.verified

    def one_failure(phase: str, requests: list, results: list) -> None:
        from tasks.push.apns.client import PushResult

        if phase == "many streams":
            results = [PushResult(results[0].device_token, 410, "Unregistered"), *results[1:]]
        real(phase, requests, results)

    monkeypatch.setattr(push, "verified", one_failure)
    assert push.main(["--batch", "50", "--rounds", "1", "--single", "5"]) == 1
    captured = capsys.readouterr()
    assert "push: many streams" not in captured.out
    assert "many streams: 1 of 50 notifications failed" in captured.err
    assert "410 Unregistered" in captured.err
