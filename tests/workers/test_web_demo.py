"""`farm demo --serve`: Flower and the web tier are up before the workload starts, so both see
the farm at work; the web tier shows the demo's feeds and what the stand-ins received (pushes
included, and one sent from its own form); Flower
wants its password; the embedded server's password is kept 0600 for an operator's `farm`
commands and shown nowhere; SIGTERM stops it all. One demo run for all of it (it is slow)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.http import http_get
from tests.support.workers import wait_for
from workers.demo_apns import device_token
from workers.embedded_redis import free_port

pytestmark = pytest.mark.integration


def test_demo_serve_starts_flower_and_the_web_tier_before_the_workload(tmp_path: Path) -> None:
    flower_port, web_port = free_port(), free_port()
    env_file = tmp_path / "demo" / "redis.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_STATE_DIR=str(tmp_path), FARM_FLOWER_PORT=str(flower_port),
               FARM_FLOWER_PASSWORD="demo-pw", FARM_WEB_PORT=str(web_port))
    log = tmp_path / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--serve"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    web = f"http://127.0.0.1:{web_port}"
    try:
        def output() -> str:
            assert proc.poll() is None, log.read_text()
            return log.read_text()

        wait_for(lambda: "still serving" in output(), timeout=150, interval=0.2,
                 what="the demo's workload done")
        text = output()
        assert text.index("serving: Flower") < text.index("== farm ping")
        assert f"the web tier on {web}" in text
        # Flower was listening from the start: it saw the workload's tasks as they ran.
        status, body = http_get(f"http://127.0.0.1:{flower_port}/api/tasks", "farm:demo-pw")
        seen = {t["name"] for t in json.loads(body).values()} if status == 200 else set()
        assert {"photos.process", "feeds.fanout_chunk", "social.crosspost"} <= seen
        # The web tier reads what the demo made: user 12 follows user 1.
        status, body = http_get(f"{web}/api/users/12/feed")
        assert status == 200
        assert [p["photo_id"] for p in json.loads(body)["feed"]] == ["102", "101"]
        status, body = http_get(f"{web}/standins")
        assert status == 200
        page = body.decode()
        assert "@demo1" in page and "first light https://photofarm.example/p/101" in page
        assert "msg_1_101" in page and "verified" in page
        # notify_users([1, 2, 3]) reached the APNs stand-in through a real io worker, one push
        # per registered device, and the page shows them.
        assert "== pushes, as the APNs stand-in received them (3 received, 3 answered 200)" \
            in text
        pushes = page.split("<table id=apns>")[1].split("</table>")[0]
        for user in (1, 2, 3):
            short = f"{device_token(user)[:8]}...{device_token(user)[-4:]}"
            assert re.search(f"<td>{re.escape(short)}</td><td>Your photo has a new like</td>"
                             r"<td>\d\d:\d\d:\d\d</td><td>200</td>", pushes), pushes
        assert device_token(1) not in page  # shortened
        assert (tmp_path / "demo" / "apns").stat().st_mode & 0o777 == 0o700
        # The web tier's own push form: enqueue.notify_users, behind its CSRF token.
        with httpx.Client(base_url=web, timeout=10) as browser:
            token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/").text)
            assert token
            form = {"user_ids": "2, 3", "alert": "sent from the form"}
            assert browser.post("/notify", data=form).status_code == 403
            sent = browser.post("/notify", data={**form, "csrf": token.group(1)})
            assert sent.status_code == 303 and sent.headers["location"] == "/standins"
            refused = browser.post("/notify", data={**form, "user_ids": "0",
                                                    "csrf": token.group(1)})
            assert refused.status_code == 400 and "user_ids" in refused.text
        wait_for(lambda: http_get(f"{web}/standins")[1].decode().count(
            "<td>sent from the form</td>") == 2, timeout=15, what="the form's pushes")
        status, body = http_get(f"{web}/photos/101")
        assert status == 200 and http_get(f"{web}/api/photos/101")[0] == 200
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        assert http_get(flower)[0] == 401 and http_get(flower, "farm:wrong")[0] == 401
        # The embedded server requires a password, kept 0600 where an operator's `farm`
        # commands find it.
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o700
        redis_password = env_file.read_text().split("redis://:")[1].split("@")[0]
        assert len(redis_password) >= 32
        assert f"FARM_ENV_FILE={env_file} farm stats" in text
        plain = {k: v for k, v in env.items() if k != "FARM_STATE_DIR"}
        stats = subprocess.run([sys.executable, "-m", "workers.cli", "stats"], cwd=tmp_path,
                               env={**plain, "FARM_ENV_FILE": str(env_file)},
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0, stats.stderr
        assert redis_password not in stats.stdout + stats.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert time.monotonic() - started < 45
    assert text.rstrip().endswith("stopped every process the demo started")
    assert http_get(web + "/")[0] == 0  # the web tier stopped with it
    assert "demo-pw" not in text
    assert not list((tmp_path / "demo" / "apns").iterdir())  # its key and CA: gone with it
    assert not env_file.exists()  # gone with its server
    # Neither the demo's output nor any log shows the server's password.
    logs = [log, *(tmp_path / "demo" / "logs").iterdir()]
    assert [p for p in logs if redis_password in p.read_text(errors="replace")] == []
    assert [p for p in logs if "PRIVATE KEY" in p.read_text(errors="replace")] == []
    assert {p.stat().st_mode & 0o777 for p in logs[1:]} == {0o600}
