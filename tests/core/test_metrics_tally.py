"""A worker process's task counters: added up in memory, written in one round trip per flush."""

from __future__ import annotations

import os

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import get_settings
from tasks.core import metrics
from tests.support.workers import wait_for


def test_counts_wait_for_a_flush_and_are_written_once(data: redis.Redis) -> None:
    s = get_settings()
    tally = metrics.Tally(lambda: data, get_settings)
    tally._owner = os.getpid()  # no flusher thread: this test flushes by hand
    for ms in (1.5, 2.5, 4.0):
        tally.add("probe", "ok", ms)
    tally.add("probe", "retry", 10.0)
    assert metrics.read(data, s) == {}
    tally.flush()
    got = metrics.read(data, s)["probe"]
    assert (got["ok"], got["retry"], got["ms"]) == (3, 1, 18.0)
    tally.flush()  # nothing new: nothing written twice
    assert metrics.read(data, s)["probe"]["ok"] == 3


def test_the_flusher_thread_writes_within_its_interval(data: redis.Redis) -> None:
    tally = metrics.Tally(lambda: data, get_settings)
    tally.add("probe", "ok", 1.0)  # starts this process's flusher
    wait_for(lambda: metrics.read(data, get_settings()).get("probe", {}).get("ok") == 1,
             timeout=10, what="the flusher's write")


def test_a_refused_write_keeps_its_counts_for_the_next(data: redis.Redis) -> None:
    # Nothing listens on port 1; refused at once, with no retries.
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0))
    client = [down]
    tally = metrics.Tally(lambda: client[0], get_settings)
    tally._owner = os.getpid()
    tally.add("probe", "ok", 2.0)
    tally.flush()  # refused: logged, kept
    tally.add("probe", "ok", 3.0)
    client[0] = data
    tally.flush()
    got = metrics.read(data, get_settings())["probe"]
    assert (got["ok"], got["ms"]) == (2, 5.0)


def test_a_forked_child_starts_with_nothing_of_its_parents(data: redis.Redis) -> None:
    tally = metrics.Tally(lambda: data, get_settings)
    tally._owner = os.getpid()
    tally.add("probe", "ok", 1.0)
    pid = os.fork()
    if pid == 0:  # the child: its own flush writes nothing of the parent's count
        tally.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert metrics.read(data, get_settings()) == {}
    tally.flush()  # the parent's count is the parent's to write, once
    assert metrics.read(data, get_settings())["probe"]["ok"] == 1
