"""`farm metrics`: a real worker's task metrics and the broker's queues, scraped over HTTP from a
real `farm metrics` process; its auth and exposure rules; and the dashboard and alert rules in
monitoring/ checked against what it serves."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.celery_app import app
from config.settings import SettingsError, get_settings, load_settings
from tasks import enqueue
from tests.support.http import http_get
from tests.support.workers import WorkerFactory, wait_for
from workers import metrics, metrics_exporter
from workers.commands import metrics as metrics_command
from workers.commands.supervise import CONF, supervise_environ
from workers.embedded_redis import free_port
from workers.metrics_exporter import build_registry, credentials_ok, oldest_age

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- PromQL: the metric names an expression reads (a small tokenizer, enough for our queries) ----

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end():].lstrip().startswith("("):
            continue  # a function
        if m.group().lower() not in PROMQL_WORDS:
            names.add(m.group())
    return names


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":  # label_values(metric, label): the metric only
            found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["query"]["query"])
            assert found, var
            exprs.append(found.group(1))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_tokenizer_finds_metrics_not_functions_labels_or_keywords() -> None:
    assert promql_metrics('histogram_quantile(0.95, sum by (task, le) (rate('
                          'farm_task_runtime_seconds_bucket{task=~"$task"}[$__rate_interval])))'
                          ) == {"farm_task_runtime_seconds_bucket"}
    assert promql_metrics("sum(rate(a_total[5m])) by (x) / on(x) group_left b > bool 0.5"
                          ) == {"a_total", "b"}
    assert promql_metrics('max(farm_broker_up offset 1h) == 0 unless c{q="by (x)"}') == {
        "farm_broker_up", "c"}


def test_dashboard_and_alert_rules_are_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "photofarm" and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for expr in dashboard_queries():
        assert promql_metrics(expr), expr
    names = {rule["alert"] for rule in alert_rules()}
    # the three the issue asks for, at least: queue age, dead-letter growth, failure rate
    assert {"FarmQueueBacklogOld", "FarmDeadLettersGrowing", "FarmTaskFailureRate"} <= names
    for rule in alert_rules():
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert rule["annotations"]["summary"]
        assert promql_metrics(rule["expr"]), rule["expr"]


# -- pieces of the exporter --------------------------------------------------------------------

def test_queue_wait_counts_from_the_send_or_a_retry_due_later() -> None:
    now = 1_000_000.0
    assert metrics.queue_wait(SimpleNamespace(farm_sent=now - 2.5, eta=None), now) == 2.5
    due = "1970-01-12T13:46:39+00:00"  # now - 1 s: a retry's countdown, sent 10 s ago
    assert metrics.queue_wait(SimpleNamespace(farm_sent=now - 10, eta=due), now) == 1.0
    assert metrics.queue_wait(SimpleNamespace(farm_sent=now - 10, eta="garbage"), now) == 10.0
    assert metrics.queue_wait(SimpleNamespace(farm_sent="yesterday"), now) is None
    assert metrics.queue_wait(SimpleNamespace(farm_sent=True), now) is None
    assert metrics.queue_wait(SimpleNamespace(), now) is None  # an older producer: no stamp


def test_oldest_age_of_odd_messages_is_zero_not_an_error() -> None:
    now = 100.0
    assert oldest_age(json.dumps({"headers": {"farm_sent": 90.5}}).encode(), now) == 9.5
    for raw in (None, b"not json", b"[]", b'{"headers": {}}', b'{"headers": {"farm_sent": "x"}}',
                b'{"headers": {"farm_sent": 200}}'):
        assert oldest_age(raw, now) == 0.0


def test_basic_auth_check() -> None:
    import base64

    def header(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert credentials_ok(header("farm:pw"), "farm", "pw")
    for bad in (None, "", header("farm:pw2"), header("root:pw"), "Basic !!!", "Bearer pw",
                header("farm:pw").lower()):
        assert not credentials_ok(bad, "farm", "pw")


def test_off_loopback_needs_a_password_and_port_0_is_off(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    base = {"FARM_ENV_FILE": os.devnull, "FARM_STATE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="FARM_METRICS_ADDRESS"):
        metrics_command.check_exposure(load_settings({**base, "FARM_METRICS_ADDRESS": "0.0.0.0"}))
    metrics_command.check_exposure(load_settings({**base, "FARM_METRICS_ADDRESS": "0.0.0.0",
                                                  "FARM_METRICS_PASSWORD": "pw"}))
    metrics_command.check_exposure(load_settings({**base, "FARM_METRICS_ADDRESS": "::1"}))
    off = load_settings({**base, "FARM_METRICS_PORT": "0", "FARM_METRICS_ADDRESS": "0.0.0.0"})
    metrics_command.check_exposure(off)  # off: nothing exposed
    assert metrics.enable(off) is None and not (tmp_path / "metrics").exists()


def test_farm_metrics_refuses_in_one_line(tmp_path: Path) -> None:
    """Off loopback without a password, or a port already taken: exit 2, one line naming the
    variable; port 0: off, exit 0."""
    import socket

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workers.cli", "metrics"], text=True,
                              capture_output=True, timeout=60,
                              env={**os.environ, "FARM_STATE_DIR": str(tmp_path), **env})

    exposed = run(FARM_METRICS_ADDRESS="0.0.0.0")
    assert exposed.returncode == 2
    assert exposed.stderr.splitlines() == [
        "farm: configuration error: FARM_METRICS_ADDRESS: '0.0.0.0' is not a loopback address; "
        "set FARM_METRICS_PASSWORD or FARM_METRICS_PASSWORD_FILE first"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run(FARM_METRICS_PORT=str(taken.getsockname()[1]))
    assert busy.returncode == 2
    assert busy.stderr.startswith("farm: configuration error: FARM_METRICS_PORT: cannot listen")
    assert len(busy.stderr.splitlines()) == 1
    off = run(FARM_METRICS_PORT="0")
    assert (off.returncode, off.stderr) == (0, "farm metrics: off (FARM_METRICS_PORT=0)\n")


def test_supervise_runs_metrics_with_only_its_password_and_clears_old_files(
        tmp_path: Path) -> None:
    s = load_settings({"FARM_ENV_FILE": os.devnull, "FARM_METRICS_PASSWORD": "m-pw",
                       "FARM_S3_SECRET_ACCESS_KEY": "s3", "FARM_STATE_DIR": str(tmp_path)})
    env = supervise_environ(s, tmp_path)
    assert env["PHOTOFARM_METRICS_SECRETS"] == (
        f'FARM_METRICS_PASSWORD_FILE="{tmp_path / "secrets" / "metrics_password"}"')
    assert "METRICS" not in env["PHOTOFARM_WORKER_SECRETS"]
    assert "METRICS" not in env["PHOTOFARM_FLOWER_SECRETS"]
    assert env["PHOTOFARM_METRICS_AUTOSTART"] == "true"
    off = load_settings({"FARM_ENV_FILE": os.devnull, "FARM_METRICS_PORT": "0"})
    assert supervise_environ(off, tmp_path)["PHOTOFARM_METRICS_AUTOSTART"] == "false"

    parser = configparser.RawConfigParser()
    parser.read(CONF)
    prog = parser["program:metrics"]
    assert prog["command"].split()[1:] == ["metrics"]  # no secret on its command line
    assert prog["environment"] == "%(ENV_PHOTOFARM_METRICS_SECRETS)s"
    assert prog["autostart"] == "%(ENV_PHOTOFARM_METRICS_AUTOSTART)s"
    for name in ("cpu", "feed", "io", "batch"):
        assert "METRICS" not in parser[f"program:{name}"]["environment"]

    folder = tmp_path / "metrics"
    folder.mkdir()
    for old in ("counter_1.db", "histogram_2.db"):
        (folder / old).write_bytes(b"x")
    assert metrics.clear(folder) == 2 and list(folder.iterdir()) == []


def test_the_collector_reads_depth_and_oldest_age_from_the_broker(
        data: redis.Redis, tmp_path: Path) -> None:
    s = get_settings()
    sent = time.time()
    for photo in (501, 502, 503):
        enqueue.photo_uploaded(photo, 5, f"originals/{photo}.jpg")
    scraped = parse(generate_latest(build_registry(s, tmp_path)).decode())
    assert sample(scraped, "farm_broker_up") == 1
    assert sample(scraped, "farm_queue_depth", queue="photos") == 3
    assert sample(scraped, "farm_queue_depth", queue="feeds") == 0
    age = sample(scraped, "farm_queue_oldest_age_seconds", queue="photos")
    assert age is not None and 0 < age < time.time() - sent + 1
    assert sample(scraped, "farm_queue_oldest_age_seconds", queue="feeds") == 0
    assert sample(scraped, "farm_deadletters") == 0

    # A broker that does not answer: the scrape still works and says so.
    down = dataclasses.replace(s, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    scraped = parse(generate_latest(build_registry(down, tmp_path)).decode())
    assert sample(scraped, "farm_broker_up") == 0
    assert sample(scraped, "farm_queue_depth", queue="photos") is None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_of_processes_gone_are_folded_without_changing_a_sum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool recycling its children leaves a pair of files per child; the scrape folds the
    dead ones into one archive per type, and what it serves stays the same."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pids = [dead_pid(), dead_pid(), os.getpid()]  # two children gone, one alive
    for n, pid in enumerate(pids, 1):
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))
        reg = CollectorRegistry()
        Counter("farm_t", "t", ["task"], registry=reg).labels("a").inc(n)
        Histogram("farm_h", "h", buckets=(1.0,), registry=reg).observe(0.5 * n)
    first = parse(generate_latest(build_registry(get_settings(), tmp_path)).decode())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{os.getpid()}.db", f"histogram_{os.getpid()}.db",
         "counter_archive.db", "histogram_archive.db"])
    assert sample(first, "farm_t_total", task="a") == 1 + 2 + 3
    assert sample(first, "farm_h_bucket", le="1.0") == 2  # 0.5 and 1.0; 1.5 is over
    assert sample(first, "farm_h_count") == 3 and sample(first, "farm_h_sum") == 3.0
    again = parse(generate_latest(build_registry(get_settings(), tmp_path)).decode())
    assert {k: v for k, v in again.items() if k[0].startswith("farm_t") or k[0].startswith(
        "farm_h")} == {k: v for k, v in first.items() if k[0].startswith("farm_t")
                       or k[0].startswith("farm_h")}
    assert metrics_exporter.compact(tmp_path) == 0  # nothing more to fold


# -- a real worker and a real `farm metrics` ----------------------------------------------------

@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A `farm metrics` process with a password: (base URL, user:password, env for workers)."""
    port, password = free_port(), "metrics-pw-" + os.urandom(6).hex()
    env = {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_METRICS_PORT": str(port),
           "FARM_METRICS_PASSWORD": password}
    log = tmp_path / "metrics.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "metrics"],
                                env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or http_get(base + "/")[0] == 401,
                 timeout=30, what="farm metrics serving")
        assert proc.poll() is None, log.read_text()
        yield base, f"farm:{password}", {"FARM_STATE_DIR": env["FARM_STATE_DIR"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert password not in log.read_text()


def scrape(base: str, auth: str) -> Samples:
    status, body = http_get(base + "/metrics", auth)
    assert status == 200
    return parse(body.decode())


def flaky(marker: str, fail_times: int, mode: str = "transient") -> None:
    app.send_task("diag.flaky", kwargs={"marker": marker, "fail_times": fail_times,
                                        "mode": mode, "retry_after": 0.2})


def test_a_real_worker_scraped_through_farm_metrics(
        data: redis.Redis, workers: WorkerFactory,
        exporter: tuple[str, str, dict[str, str]]) -> None:
    base, auth, env = exporter
    assert http_get(base + "/metrics")[0] == 401
    assert http_get(base + "/metrics", "farm:wrong")[0] == 401
    assert http_get(base + "/metrics", auth.replace("farm:", "root:"))[0] == 401

    # Queued with no worker yet: the depth and age come from the broker at scrape time.
    flaky("m-ok", 0)
    flaky("m-retry", 1)
    flaky("m-dead", 1, mode="permanent")
    app.send_task("no.such.task", queue="maintenance")  # a deploy's new task, old workers
    before = scrape(base, auth)
    assert sample(before, "farm_queue_depth", queue="maintenance") == 4
    assert (sample(before, "farm_queue_oldest_age_seconds", queue="maintenance") or 0) > 0
    assert sample(before, "farm_task_started_total", task="diag.flaky") is None  # nothing ran

    workers("batch", env=env)
    task = {"task": "diag.flaky"}

    def settled() -> Samples | None:
        now = scrape(base, auth)
        done = (sample(now, "farm_task_succeeded_total", **task) == 2
                and sample(now, "farm_task_failed_total", **task) == 1
                and sample(now, "farm_messages_dead_lettered_total", reason="unknown_task") == 1)
        return now if done else None

    after = wait_for(settled, timeout=30, interval=0.2, what="the three tasks counted")
    assert isinstance(after, dict)
    assert sample(after, "farm_task_started_total", **task) == 4  # m-retry ran twice
    assert sample(after, "farm_task_retried_total", **task) == 1
    assert sample(after, "farm_task_dead_lettered_total", reason="permanent", **task) == 1
    assert sample(after, "farm_task_runtime_seconds_count", **task) == 4
    assert sample(after, "farm_task_runtime_seconds_bucket", le="+Inf", **task) == 4
    assert sample(after, "farm_task_queue_wait_seconds_count", **task) == 4
    # The three sent before the worker started waited for it; the retry waited 0.2 s or more.
    assert (sample(after, "farm_task_queue_wait_seconds_sum", **task) or 0) > 0.2
    assert sample(after, "farm_queue_depth", queue="maintenance") == 0
    assert sample(after, "farm_deadletters") == 2  # m-dead, and the unknown task's message
    assert sample(after, "farm_messages_dead_lettered_total", reason="too_large") == 0
    assert sample(after, "farm_broker_up") == 1
    # The worker's unused domain counters are there at 0, summed from its processes' files.
    assert sample(after, "farm_photos_refused_total", reason="corrupt") == 0

    # Every metric the dashboard and the alert rules query is one `farm metrics` serves.
    served = {name for name, _ in after}
    for expr in dashboard_queries() + [rule["expr"] for rule in alert_rules()]:
        missing = promql_metrics(expr) - served
        assert not missing, f"{expr}: not served: {missing}"
