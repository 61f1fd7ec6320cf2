"""`farm top` as operators and scripts run it: `--once --json` and `--svg` as subprocesses beside a
real worker, and the live view driven in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core import metrics
from tests.support.workers import WorkerFactory, wait_for
from workers.cli import main as farm
from workers.embedded_redis import free_port

pytestmark = pytest.mark.integration

FARM = [sys.executable, "-m", "workers.cli", "top"]
ANSI = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>78])")


def test_once_json_lists_depths_ages_tasks_and_the_running_worker(
        workers: WorkerFactory, data: redis.Redis, on_amqp: bool) -> None:
    workers("batch", node="topbatch", queues=["maintenance"])
    for _ in range(3):
        app.send_task("diag.sleep", args=[0], queue="photos")  # no worker serves photos
    for _ in range(4):
        app.send_task("diag.sleep", args=[0], queue="maintenance")
    key = metrics.metrics_key(get_settings())
    wait_for(lambda: data.hget(key, "diag.sleep:ok") == "4", timeout=30,
             what="the worker to run the maintenance tasks")

    out = subprocess.run([*FARM, "--once", "--json"], capture_output=True, timeout=60, check=True)
    snap = json.loads(out.stdout)

    assert snap["queues"]["photos"]["depth"] == 3 and snap["queues"]["maintenance"]["depth"] == 0
    age = snap["queues"]["photos"]["oldest_age_s"]
    if on_amqp:  # a queue's head cannot be read without taking it: shown as unknown
        assert age is None
    else:
        assert age is not None and 0 <= age < 60  # every farm publish is stamped with its time
    assert snap["queues"]["maintenance"]["oldest_age_s"] is None
    assert snap["queues"]["photos"]["in_per_s"] is not None  # two samples, a second apart
    assert snap["tasks"]["diag.sleep"]["ok"] == 4 and snap["deadletters"] == 0
    (worker,) = [w for w in snap["workers"] if w["node"].startswith("topbatch@")]
    assert worker["alive"] and worker["processed"] == 4 and worker["active"] == 0


def test_once_svg_saves_the_view_as_a_picture(data: redis.Redis, tmp_path: Path) -> None:
    app.send_task("diag.sleep", args=[0], queue="webhooks")
    svg = tmp_path / "top.svg"
    out = subprocess.run([*FARM, "--once", "--svg", str(svg), "--interval", "0.2"],
                         capture_output=True, timeout=60, check=True)
    assert b"webhooks" in out.stdout  # the text view is printed too
    picture = svg.read_text()
    assert picture.lstrip().startswith("<svg") and picture.rstrip().endswith("</svg>")
    assert "webhooks" in picture and "maintenance" in picture
    nowhere = tmp_path / "missing" / "top.svg"
    out = subprocess.run([*FARM, "--once", "--svg", str(nowhere), "--interval", "0.2"],
                         capture_output=True, timeout=60)
    assert out.returncode == 1 and b"cannot write" in out.stderr and b"Traceback" not in out.stderr


def test_the_live_view_needs_a_terminal_and_sane_options(
        data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    assert farm(["top"]) == 2  # pytest's stdout is not a terminal
    assert "use `farm top --once`" in capsys.readouterr().err
    assert farm(["top", "--json"]) == 2
    assert farm(["top", "--once", "--interval", "0"]) == 2


class Terminal:
    """`farm top` on a pseudo-terminal of 120x40, its output read as it comes."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.settings = termios.tcgetattr(self.slave)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40",
               **(env or {})}
        self.proc = subprocess.Popen(FARM, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=env, start_new_session=True)
        self.output = b""

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        return self.output

    def text(self) -> str:
        return ANSI.sub(b"", self.read()).decode(errors="replace")

    def wait_exit(self, timeout: float = 20.0) -> int:
        wait_for(lambda: self.read() is not None and self.proc.poll() is not None,
                 timeout=timeout, what="farm top to exit")
        self.read()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize("leave", ["q", "SIGINT"])
def test_the_live_view_shows_queues_refreshes_and_restores_the_terminal(
        data: redis.Redis, leave: str) -> None:
    for _ in range(2):
        app.send_task("diag.sleep", args=[0], queue="push")
    term = Terminal()
    try:
        wait_for(lambda: re.search(r"push\s+2\s", term.text()), timeout=60, interval=0.1,
                 what="the push queue and its depth on screen")
        assert "maintenance" in term.text() and "q: quit" in term.text()
        # It refreshes: a third message shows within a few seconds.
        app.send_task("diag.sleep", args=[0], queue="push")
        seen = len(term.text())
        wait_for(lambda: re.search(r"push\s+3\s", term.text()[seen:]), timeout=20,
                 interval=0.1, what="the new depth on screen")
        if leave == "q":
            os.write(term.master, b"q")
        else:
            term.proc.send_signal(signal.SIGINT)
        assert term.wait_exit() == 0
        # Back on the main screen, cursor shown, the terminal's modes as they were.
        assert b"\x1b[?1049l" in term.output
        assert b"\x1b[?25h" in term.output
        assert termios.tcgetattr(term.slave) == term.settings
    finally:
        term.close()


def test_the_live_view_leaves_cleanly_on_sigterm(data: redis.Redis) -> None:
    term = Terminal()
    try:
        wait_for(lambda: "maintenance" in term.text(), timeout=60, interval=0.1,
                 what="the first screen")
        term.proc.send_signal(signal.SIGTERM)
        assert term.wait_exit() == 0
        assert termios.tcgetattr(term.slave) == term.settings
    finally:
        term.close()


def test_an_unreachable_broker_is_shown_not_fatal(data: redis.Redis) -> None:
    dead = {"FARM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    out = subprocess.run([*FARM, "--once", "--json"], capture_output=True, timeout=60,
                         env={**os.environ, **dead})
    assert out.returncode == 1
    assert out.stderr.startswith(b"farm top: ") and b"connecting" in out.stderr
    term = Terminal(dead)
    try:
        wait_for(lambda: "Redis unreachable" in term.text(), timeout=60, interval=0.1,
                 what="the reason on screen")
        os.write(term.master, b"q")
        assert term.wait_exit() == 0
        assert termios.tcgetattr(term.slave) == term.settings
    finally:
        term.close()


def test_once_without_any_worker_answers_promptly(data: redis.Redis) -> None:
    # No worker at all: --once still answers within its interval and the wakeup's grace.
    started = time.monotonic()
    out = subprocess.run([*FARM, "--once", "--json", "--interval", "0.2"], capture_output=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout)["workers"] == []
    assert time.monotonic() - started < 20
