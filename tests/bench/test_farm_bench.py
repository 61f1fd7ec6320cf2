"""`farm bench farm` measures a real (small) supervised farm and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import farm

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"farm / baseline: idle PSS [\d.]+, under load [\d.]+")


def test_tree_and_pss_follow_a_process_and_its_children() -> None:
    # The child says it is up once its interpreter is loaded: measured before that, a fresh
    # fork is a few hundred KiB of PSS.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        found = farm.tree(os.getpid())
        assert os.getpid() in found and child.pid in found
        assert farm.pss([child.pid]) > 1024 * 1024  # an interpreter is megabytes
        assert farm.pss([os.getpid(), child.pid]) > farm.pss([child.pid])
    finally:
        child.kill()
        child.wait()
    assert child.pid not in farm.tree(os.getpid())  # reaped: gone from the tree
    assert farm.pss([child.pid]) == 0


def test_a_worker_starts_without_celerys_whole_cli() -> None:
    # `farm worker` goes through start_worker; --help parses with Celery's own worker command
    # and returns before any connection. Its REPL and Flower's plugin stay out of the process.
    code = ("import sys\n"
            "from config.celery_app import app\n"
            "from workers.profiles import start_worker\n"
            "assert start_worker(app, ['worker', '--help']) == 0\n"
            "print(sorted(m for m in ('prompt_toolkit', 'click_repl', 'flower', 'tornado',\n"
            "                         'celery.bin.celery') if m in sys.modules))\n")
    env = {**os.environ, "FARM_ENV_FILE": os.devnull}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--concurrency" in out.stdout  # Celery's worker options, parsed by Celery
    assert out.stdout.splitlines()[-1] == "[]"


@pytest.mark.integration
def test_small_farm_is_measured_and_nothing_is_left_behind() -> None:
    # Its own process: the benchmark points this interpreter's settings at its own server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    out = subprocess.run([sys.executable, "-m", "bench.farm", "--small", "--steady", "1",
                          "--uploads", "1", "--users", "5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines
    # supervisord, 3 prefork parents with 1 child each, 2 io processes, beat, flower, metrics
    first = re.match(r"farm \(cpu 1, feed 1, io 2 x 2 threads, batch 1\): (\d+) processes, "
                     r"started in [\d.]+ s", lines[0])
    assert first and int(first.group(1)) == 12, lines[0]
    per_program = {ln.split()[0]: int(ln.split()[1]) for ln in lines[1:]
                   if ln.startswith("  ")}
    assert per_program == {"supervisord": 1, "cpu": 2, "feed": 2, "io": 2, "batch": 2,
                           "beat": 1, "flower": 1, "metrics": 1}
    idle = re.search(r"^idle +(\d+) MiB PSS", out.stdout, re.M)
    assert idle and 100 < int(idle.group(1)) < 2000
    load = re.search(r"(\d+) messages sent, (\d+) tasks run \((\d+) dead-lettered\)", out.stdout)
    assert load and int(load.group(2)) >= int(load.group(1)) and load.group(3) == "0", lines
    assert "left behind: 0 processes of the tree, no server" in out.stdout
