"""`farm webhooks ...`: the secret shown once, listings without secrets, resume queues the
replay, times for --since."""

from __future__ import annotations

import argparse
import json
import time

import pytest
import redis

from tasks.webhooks.subscriptions import Subscriptions
from tests.webhooks.conftest import OWNER, queued
from workers.commands import webhooks as command
from workers.demo_webhooks import WebhookReceiver


def farm(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="farm")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["webhooks", *argv])
    return int(args.handler(args))


def test_add_shows_the_secret_once_and_list_never(
        subs: Subscriptions, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str],
        data: redis.Redis) -> None:
    assert farm("add", "tag", "#Sunset", receiver.url("/cb")) == 0
    out = capsys.readouterr().out
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret:"))
    assert secret.startswith("whsec_") and "callback verified" in out
    (sub,) = subs.list()
    assert sub.secret() == secret and sub.object_id == "sunset"
    assert farm("list") == 0
    listed = capsys.readouterr().out
    assert receiver.url("/cb") in listed and secret not in listed
    assert farm("list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["state"] == "active" and secret not in json.dumps(rows)
    assert "secret" not in rows[0]


def test_add_refused_by_the_challenge(subs: Subscriptions, receiver: WebhookReceiver,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    receiver.fail_next(1, status=404)
    assert farm("add", "user", str(OWNER), receiver.url("/cb")) == 2
    assert "HTTP 404" in capsys.readouterr().err and subs.list() == []


def test_pause_resume_queues_the_replay_and_remove(
        subs: Subscriptions, receiver: WebhookReceiver, broker: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    sub, _ = subs.add("user", OWNER, receiver.url("/cb"))
    assert farm("pause", str(sub.id), "--reason", "their maintenance") == 0
    assert "their maintenance" in capsys.readouterr().out
    assert farm("replay", str(sub.id), "--since", "1h") == 1  # paused: resume first
    assert "resume" in capsys.readouterr().err
    assert farm("resume", str(sub.id)) == 0
    assert "replay of what it missed" in capsys.readouterr().out
    (msg,) = queued(broker, "webhooks_batch")
    assert msg["task"] == "webhooks.replay"
    assert msg["kwargs"] == {"subscriber_id": sub.id,
                             "since": subs.get(sub.id).paused_at}
    assert farm("replay", str(sub.id), "--since", "2h") == 0
    sinces = [m["kwargs"]["since"] for m in queued(broker, "webhooks_batch")]
    assert len(sinces) == 2 and min(abs(t - (time.time() - 7200)) for t in sinces) < 60
    assert farm("remove", str(sub.id)) == 0
    assert farm("pause", str(sub.id)) == 1
    assert f"no webhook subscription {sub.id}" in capsys.readouterr().err


def test_since_forms() -> None:
    now = 1_750_000_000.0
    assert command.parse_since("90s", now) == now - 90
    assert command.parse_since("2h", now) == now - 7200
    assert command.parse_since("1d", now) == now - 86400
    assert command.parse_since("1700000000", now) == 1_700_000_000
    assert command.parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000
    assert command.parse_since("2023-11-14T23:13:20+01:00", now) == 1_700_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        command.parse_since("yesterday", now)
