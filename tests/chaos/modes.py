"""One chaos mode, start to finish, in this process: servers, workers, kills while the work is
sent, then drain, sweep the fan-out ledger, replay dead letters, drain again, and check.

Run as ``python -m tests.chaos.modes MODE short|full SEED RESULT_JSON keep|drop [redis|amqp]``
by the suite (tests/chaos/__main__.py), each mode in a process of its own. Every FARM_* variable
of the caller is dropped first: only the mode's settings count. The broker is the mode's own
either way (broker.py): a Redis server, or a vhost on the machine's RabbitMQ (rabbit.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.chaos.audit import audit
from tests.chaos.broker import make_broker
from tests.chaos.farm import Farm, Sizes

MODES = ("fanout-children", "fanout-parents", "fanout-warm", "fanout-broker", "photos", "push")
KILLS = ("child", "parent", "group", "term")

# Short limits so a message a killed worker held comes back in seconds (tests/support/workers.py's
# FAST_REDELIVERY), a dead consumer's in-flight list too (the heartbeat's floor), and the ledger
# sweep may re-send a chunk 3 s after it was sent (only the harness runs it: after the drain).
BASE_ENV = {
    "FARM_TASK_TIME_LIMIT": "4",
    "FARM_TASK_SOFT_TIME_LIMIT": "3",
    "FARM_RETRY_MAX_DELAY": "1",
    "FARM_RETRY_BASE_DELAY": "0.2",
    "FARM_VISIBILITY_TIMEOUT": "6",
    "FARM_RESTORE_INTERVAL": "1",
    "FARM_INFLIGHT_HEARTBEAT": "5",
    "FARM_FANOUT_SWEEP_AFTER": "3",
    "FARM_STRICT_ARGS": "1",
}
GRACE = 10.0  # supervisord's stopwaitsecs for a warm stop, kept short


def say(line: str = "") -> None:
    print(line, flush=True)


def sizes_for(mode: str, short: bool) -> Sizes:
    if mode == "photos":
        return (Sizes(200, 5, 400, 12, chunk=25, kill_seconds=6) if short
                else Sizes(3000, 12, 6000, 150, chunk=200, kill_seconds=40))
    if mode == "push":
        return (Sizes(300, 0, 0, 40, kill_seconds=6) if short
                else Sizes(3000, 0, 0, 400, kill_seconds=40))
    return (Sizes(400, 8, 900, 40, chunk=25, kill_seconds=6) if short
            else Sizes(20_000, 30, 42_930, 500, chunk=200, kill_seconds=45))


def scenario_for(mode: str, sizes: Any, rng: random.Random) -> Any:
    from tests.chaos import scenarios
    from tests.chaos.push import PushScenario

    kinds = {"fanout-children": scenarios.FanoutChildren, "fanout-parents": scenarios.FanoutParents,
             "fanout-warm": scenarios.FanoutWarm, "fanout-broker": scenarios.FanoutBroker,
             "photos": scenarios.PhotosScenario, "push": PushScenario}
    return kinds[mode](sizes, rng)


def retrying(send: Any, n: int, patience: float = 60.0) -> int:
    """Send item n as the web tier would, trying again while the broker is away (restarting);
    how many attempts failed."""
    deadline, failures = time.monotonic() + patience, 0
    while True:
        try:
            send(n)
            return failures
        except Exception:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_mode(mode: str, short: bool, seed: int, keep: bool = False,
             broker: str = "redis") -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(f"{seed}:{mode}")
    root = Path(tempfile.mkdtemp(prefix=f"farm-chaos-{mode}-"))
    sizes = sizes_for(mode, short)
    sizes.check()
    farm = Farm(root, make_broker(broker, root, mode), grace=GRACE)
    result: dict[str, Any] = {"mode": mode, "broker": broker, "problems": []}
    scenario: Any = None
    try:
        # The mode's own servers in the environment before anything reads the farm's settings
        # (the app is built at import): nothing may reach the machine's default Redis.
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[name]
        os.environ.update({**BASE_ENV, **farm.start_servers(), "FARM_ENV_FILE": os.devnull,
                           "FARM_STATE_DIR": str(root / "state"),
                           "FARM_STORAGE_URL": f"file://{root}/blobs",
                           "FARM_FEED_CHUNK_SIZE": str(sizes.chunk),
                           "FARM_FEED_SHARDS": f"{farm.data.url(2)},{farm.data.url(3)}"})
        scenario = scenario_for(mode, sizes, rng)
        farm.slots = scenario.slots()
        if mode == "push":
            os.environ.update(scenario.start_standin(farm))
        from config.celery_app import app
        from config.settings import get_settings

        s = get_settings()
        if (s.broker_url, s.redis_url, app.conf.broker_url) != (
                farm.broker.url, farm.data.url(1), farm.broker.url):
            raise RuntimeError(f"settings do not name the mode's servers: {s.broker_url}")
        scenario.setup(farm)
        farm.start_workers(dict(os.environ))
        say(f"[{mode}] broker: {farm.broker.describe()}; data :{farm.data.port}; "
            f"{len(farm.slots)} workers up; {sizes.items} items over "
            f"{sizes.kill_seconds:g} s of kills (seed {seed})")
        farm.supervise()
        # The killer's own generator: the sender thread draws from the scenario's meanwhile.
        result.update(strike(farm, scenario, sizes, random.Random(f"{seed}:{mode}:kills")))
        settled = settle(farm, short)
        result["problems"] += settled.pop("problems")
        result.update(settled)
        result.update(scenario.check())
        deadlettered = result.pop("deadlettered")
        pending = farm.broker.pending_ids() if result["left"] else set()
        a = audit(farm.broker.sent(), farm.logs, deadlettered, pending)
        result.update(tasks_sent=a.sent, tasks_lost=len(a.lost), ran_twice=a.ran_twice,
                      restored=a.restored,
                      pending=a.pending, lost_by_task=dict(a.lost_by_task()),
                      sent_by_task=dict(a.by_task),
                      dl_history=[f"{task} {tid}: received {n} times, ran to ok {ok} times"
                                  for task, tid, n, ok in a.dead[:12]])
        result["problems"] += [f"lost: {s.task} {tid} {s.kwargs}" for tid, s in a.lost[:10]]
        result["orphans"] = farm.orphans()
    finally:
        (root / "events.json").write_text(json.dumps([vars(e) for e in farm.events]))
        if mode == "push" and scenario is not None:
            scenario.close()
        farm.teardown()
        if keep:
            say(f"[{mode}] kept: {root} (broker AOF on Redis, worker logs, events.json)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = time.monotonic() - started
    result["passed"] = passed(result)
    return result


def strike(farm: Farm, scenario: Any, sizes: Any, rng: random.Random) -> dict[str, Any]:
    """Send the items evenly over the first 80% of the kill window while the killer strikes
    every 0.5-2 s; with a broker crash, once, half-way."""
    window = sizes.kill_seconds
    failures: list[int] = []

    def sender() -> None:
        t0 = time.monotonic()
        for n in range(sizes.items):
            delay = t0 + n * window * 0.8 / sizes.items - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            failures.append(retrying(scenario.send, n))

    thread = threading.Thread(target=sender, name="chaos-sender", daemon=True)  # a stop ends it
    t0 = time.monotonic()
    thread.start()
    crash_at = t0 + window / 2 if scenario.broker_crash else None
    blow: dict[str, float] = {}
    while True:
        pause = rng.uniform(0.5, 2.0)
        if time.monotonic() + pause > t0 + window:
            break
        time.sleep(pause)
        if crash_at is not None and time.monotonic() >= crash_at:
            blow, crash_at = farm.crash_broker(), None
            continue
        while time.monotonic() < t0 + window:  # none consuming yet (all restarting): wait
            if farm.strike(rng, scenario.kinds) is not None:
                break
            time.sleep(0.05)
    thread.join()
    kills = Counter(e.kind for e in farm.events if e.kind in KILLS)
    return {"kill_seconds": time.monotonic() - t0, "kills": dict(kills),
            "send_failures": sum(failures), **blow}


def settle(farm: Farm, short: bool) -> dict[str, Any]:
    """After the kills: every worker back, the farm drained; the fan-out ledger swept until
    empty (the `fanout-sweep` job, as `farm batch fanout-sweep` runs it); every dead letter
    replayed (what `farm deadletter replay --all` does) and the farm drained again."""
    from config.celery_app import app
    from config.settings import get_settings
    from tasks.core.deadletter import DeadLetterStore
    from tasks.core.jobs import run_job
    from tasks.core.redis import data_redis
    from tasks.feeds import jobs
    from tasks.feeds.store import feed_store

    s, r = get_settings(), data_redis()
    out: dict[str, Any] = {"problems": []}
    patience = 90.0 if short else 240.0
    if not farm.wait_all_ready(patience):
        out["problems"].append("not every worker came back after the kills")
    left = farm.wait_drained(patience)
    store = feed_store()
    index = store.graph.zrange(store.pending_index, 0, -1)
    owners = [int((m.decode() if isinstance(m, bytes) else str(m)).split(":")[0]) for m in index]
    out["chunks_listed"] = sum(int(store.graph.hlen(store.pending_key(o))) for o in owners)
    # Until nothing is left to do: a replayed chunk crosses itself off the ledger, and a chunk
    # the sweep re-sends may itself end as a dead letter.
    dead = DeadLetterStore(r, s)
    reasons: Counter[str] = Counter()
    out["deadlettered"], replayed, resent = set(), 0, 0
    deadline, rounds = time.monotonic() + patience, 0
    while time.monotonic() < deadline and rounds < 8:  # a task failing for good stays failed
        rounds += 1
        if store.graph.zcard(store.pending_index):
            resent += int(run_job(jobs.FANOUT_SWEEP, r, s).get("resent", 0))
            left = farm.wait_drained(patience)
        entries = dead.list(limit=100_000)
        for entry in entries:
            out["deadlettered"].add(entry.id)
            reasons[f"{entry.task} {entry.reason} ({entry.error[:120]})"] += 1
            dead.replay(entry.id, app.send_task)
            replayed += 1
        if entries:
            left = farm.wait_drained(patience)
        if not store.graph.zcard(store.pending_index) and not dead.count():
            break
        time.sleep(0.5)  # the sweep re-sends a chunk FARM_FANOUT_SWEEP_AFTER after its sending
    out["chunks_resent"] = resent
    out.update(dead_letters=len(out["deadlettered"]), dl_reasons=dict(reasons),
               replayed=replayed, dead_letters_left=dead.count(), left=left,
               ledger_left=int(store.graph.zcard(store.pending_index)),
               stops=farm.stop_summary(),
               stop_list=[[node, round(t, 2), cut] for node, t, cut in farm.stops],
               restarts=sum(e.kind == "restart" for e in farm.events))
    return out


def passed(r: dict[str, Any]) -> bool:
    zero = ("missing", "duplicated", "extra", "posts_lists_wrong", "photos_bad", "pushes_lost",
            "dups_unexplained", "pushes_extra", "tasks_lost", "dead_letters_left", "ledger_left",
            "pending")
    return (not r["left"] and not r["problems"] and all(not r.get(k) for k in zero))


def main(mode: str, short: bool, seed: int, result_path: str, keep: bool,
         broker: str = "redis") -> int:
    def stopped(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")  # so run_mode's teardown runs

    signal.signal(signal.SIGTERM, stopped)
    try:
        result = run_mode(mode, short, seed, keep, broker)
    except Exception as exc:  # reported as the mode's failure, with its traceback above
        import traceback

        traceback.print_exc()
        result = {"mode": mode, "broker": broker, "passed": False,
                  "error": f"{type(exc).__name__}: {exc}",
                  "problems": [f"harness error: {exc}"]}
    Path(result_path).write_text(json.dumps(result, default=list))
    return 0 if result.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] == "short", int(sys.argv[3]), sys.argv[4],
                  sys.argv[5] == "keep", sys.argv[6] if len(sys.argv) > 6 else "redis"))
