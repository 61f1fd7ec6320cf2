"""Flower in a real browser: a real `farm flower` behind its password, a real worker that ran
the farm's tasks, and headless chromium logging in and finding both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.http import http_get
from tests.support.workers import WorkerFactory, stop_group, wait_for
from workers.embedded_redis import free_port

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, password = free_port(), "flower-pw-" + os.urandom(6).hex()
    env = {**os.environ, "FARM_FLOWER_PORT": str(port), "FARM_FLOWER_PASSWORD": password}
    with open(tmp_path / "flower.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "flower"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and http_get(base + "/healthcheck")[0] == 200,
                 timeout=60, interval=0.2, what="Flower serving")
        yield base, password
    finally:
        stop_group(proc)


def test_flower_shows_the_farms_task_names_and_workers(
        flower: tuple[str, str], workers: WorkerFactory, data: redis.Redis, browser: Any,
        artifacts: Path) -> None:
    from config.celery_app import app
    from config.settings import get_settings

    base, password = flower
    workers("batch", node="browser-batch")  # serves the maintenance queue, where diag.* go
    marker = f"browser-{time.time_ns()}"
    for _ in range(3):
        app.send_task("diag.sleep", kwargs={"seconds": 0, "marker": marker})
    key = get_settings().key("diag", marker)
    wait_for(lambda: data.llen(key) == 3, timeout=30, what="three diag.sleep runs")

    # Without the password: 401 (chromium itself gives up on the page: invalid credentials).
    denied = browser.new_context(http_credentials={"username": "farm", "password": "wrong"})
    try:
        assert denied.request.get(base + "/workers").status == 401
    finally:
        denied.close()
    context = browser.new_context(http_credentials={"username": "farm", "password": password},
                                  viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(base + "/workers")
        page.get_by_text("browser-batch@", exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "flower-workers.png"))
        # The task list fills from the workers' events; reload until Flower has them.
        page.goto(base + "/tasks")
        page.get_by_text("diag.sleep").first.wait_for(timeout=30_000)
        assert page.get_by_text("SUCCESS").count() >= 1
        page.screenshot(path=str(artifacts / "flower-tasks.png"), full_page=True)
    finally:
        context.close()
