"""Queues and routes: one list, every task routed, every queue served by some worker profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.celery_app import app
from config.queues import QUEUES, ROUTES, check_queues
from config.settings import load_settings
from workers.profiles import PROFILES, get_profile, worker_argv


def test_every_registered_task_routes_to_a_declared_queue() -> None:
    app.loader.import_default_modules()
    farm_tasks = {name for name in app.tasks if not name.startswith("celery.")}
    assert farm_tasks == set(ROUTES), "registered tasks and config/queues.py ROUTES differ"
    for name in farm_tasks:
        assert ROUTES[name] in QUEUES
        route = app.amqp.router.route({}, name)
        assert route["queue"].name == ROUTES[name]


def test_every_queue_is_consumed_by_a_profile() -> None:
    served = [q for p in PROFILES.values() for q in p.queues]
    assert sorted(served) == sorted(QUEUES), "each queue served by exactly one profile"


def test_batch_queues_never_share_a_worker_with_interactive_ones() -> None:
    for profile in PROFILES.values():
        kinds = {q.endswith("_batch") or q == "maintenance" for q in profile.queues}
        assert len(kinds) == 1, f"profile {profile.name} mixes batch and interactive queues"


def test_unknown_profile_and_queue_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown worker profile 'gpu'"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="unknown queue"):
        check_queues(["photos", "photoz"])


def test_worker_argv_fits_the_pool() -> None:
    s = load_settings({}, dotenv=Path("/nonexistent/.env"))
    cpu = worker_argv(PROFILES["cpu"], s)
    assert cpu[cpu.index("--pool") + 1] == "prefork"
    assert "--max-tasks-per-child" in cpu
    io = worker_argv(PROFILES["io"], s, concurrency=8)
    assert io[io.index("--pool") + 1] == "threads"
    assert io[io.index("--concurrency") + 1] == "8"
    assert "--max-tasks-per-child" not in io


def test_celery_is_json_only_and_at_least_once() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_ignore_result and conf.worker_send_task_events
    assert conf.task_create_missing_queues is False


@pytest.mark.parametrize(("argv", "message"), [
    (["--profile", "gpu"], "unknown worker profile 'gpu'; known: cpu, feed, io, batch"),
    (["--profile", "io", "--queues", "push,pushes"], "unknown queue(s) pushes; known: photos"),
])
def test_worker_cli_refuses_unknown_profiles_and_queues(argv: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"farm worker: {message}")


def test_a_delayed_messages_routing_key_names_its_queue() -> None:
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    from config.queues import queue_of

    assert queue_of(calculate_routing_key(7, "maintenance")) == "maintenance"
    assert queue_of(calculate_routing_key(2**28 - 1, "feeds_batch")) == "feeds_batch"
    assert queue_of("photos") == "photos" and queue_of("") == ""
    assert queue_of("1.0.photos") == "1.0.photos"  # not 28 bits: not a delay
