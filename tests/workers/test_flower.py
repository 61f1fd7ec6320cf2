"""A real `farm flower` process: every page behind its basic auth, /metrics included, and the
broker's password shown nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from config.settings import get_settings
from tests.support.http import http_get
from tests.support.workers import stop_group, wait_for
from workers.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.integration



def test_metrics_need_the_password_and_the_broker_password_is_masked(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    port, password = free_port(), "flower-pw-" + os.urandom(8).hex()
    env = {**os.environ, "FARM_FLOWER_PORT": str(port), "FARM_FLOWER_PASSWORD": password,
           "FARM_STATE_DIR": str(tmp_path / "state")}
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "flower"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base, auth = f"http://127.0.0.1:{port}", f"farm:{password}"
    try:
        wait_for(lambda: proc.poll() is None and http_get(base + "/healthcheck")[0] == 200,
                 timeout=60, interval=0.2, what="Flower serving")
        assert http_get(base + "/metrics")[0] == 401
        assert http_get(base + "/metrics", "farm:wrong")[0] == 401
        status, body = http_get(base + "/metrics", auth)
        assert status == 200 and b"# HELP" in body  # Prometheus text, once authenticated
        # The broker page shows the URL with the password masked.
        status, page = http_get(base + "/broker", auth)
        where = urlsplit(get_settings().broker_url)  # RabbitMQ's with --broker amqp
        assert status == 200 and f"{where.hostname}:{where.port}".encode() in page
        assert redis_server.password.encode() not in page
    finally:
        stop_group(proc)
    text = log.read_bytes()
    assert redis_server.password.encode() not in text and password.encode() not in text
