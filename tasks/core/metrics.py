"""Farm-wide task counters in the data Redis: what ran, how it ended, how long it took.

One hash, ``{prefix}:metrics:tasks``, fields ``<task>:<outcome>`` and ``<task>:ms``; one pipelined
round trip per task. Flower shows the live view; these survive restarts and feed `farm stats`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import cast

import redis

from config.settings import Settings

OUTCOMES = ("ok", "retry", "deadletter", "requeued", "interrupted")


def metrics_key(s: Settings) -> str:
    return s.key("metrics", "tasks")


def record(pipe: redis.client.Pipeline, s: Settings, task: str, outcome: str, ms: float) -> None:
    key = metrics_key(s)
    pipe.hincrby(key, f"{task}:{outcome}", 1)
    pipe.hincrbyfloat(key, f"{task}:ms", round(ms, 3))


def incr(client: redis.Redis, s: Settings, name: str, amount: int = 1) -> None:
    """A free-form counter (pushes sent, tokens pruned, ...) beside the task counters."""
    client.hincrby(s.key("metrics", "counters"), name, amount)


def read(client: redis.Redis, s: Settings) -> dict[str, dict[str, float]]:
    """task -> {ok, retry, deadletter, ms}."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys((*OUTCOMES, "ms"), 0))
    for field, value in cast("dict[str, str]", client.hgetall(metrics_key(s))).items():
        task, _, what = field.rpartition(":")
        out[task][what] = float(value)
    return dict(out)


def counters(client: redis.Redis, s: Settings) -> dict[str, int]:
    raw = cast("dict[str, str]", client.hgetall(s.key("metrics", "counters")))
    return {k: int(v) for k, v in raw.items()}
