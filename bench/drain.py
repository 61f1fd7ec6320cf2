"""Per-task overhead: no-op tasks drained by the farm beside stock Celery and Dramatiq.
Long because the three systems' rounds, the Redis command count and the profile share
one run's set-up and are read together.

Same server, same cores, same run.

    python -m bench.drain [--tasks N] [--rounds R] [--concurrency C] [--profile]
                          [--farm-prefetch M]                      (or: farm bench drain)

Each system gets N no-op messages published once through its own client (the farm: ``diag.sleep(0)``
through its publish batch; Celery: ``noop.apply_async``; Dramatiq: ``noop.send``), kept as a
snapshot of its Redis database. Each round restores every snapshot in turn, starts that system's
worker with C processes and times the drain, from its first message taken off the queue to its
last one acknowledged, then stops the worker. Rounds rotate the order so a drift in machine speed
hits all three; medians and ranges are printed.

- farm: ``farm worker --profile batch --concurrency C``, exactly as deployed: reliable fetch,
  acks late, prefetch 1, task events (batched, workers/event_batching.py), the task base
  (argument check, timing line at INFO, counters batched per process), Prometheus hooks.
- celery: a plain Celery 5 app with Celery's default settings (bench/drain_celery.py), prefork,
  ``-c C``.
- dramatiq: Dramatiq's Redis broker, default middleware (bench/drain_dramatiq.py),
  ``--processes C`` with Dramatiq's default 8 threads each: with one thread its consumer
  prefetches 2 and sleeps its idle backoff whenever both are taken (about 500 tasks/s here).

Where the time goes: the Redis commands each system sends per task, from the server's own INFO
commandstats over the drain (the bench's own polling subtracted), with the server's CPU per task;
and with ``--profile``, a cProfile of one farm worker (solo pool, so fetch, task and ack are in
one process) draining N tasks, its top functions by own time. Starts its own embedded Redis; the
last line holds the ratios.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workers.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.002  # seconds between looks at the queue; a drain takes seconds
START_PATIENCE = 90.0  # seconds for a worker to take its first message (a loaded machine)

FARM_FILL = """
import sys
from tasks.core.publish import batch, send
n = int(sys.argv[1])
for start in range(0, n, 1000):
    with batch() as producer:
        for _ in range(min(1000, n - start)):
            send("diag.sleep", {"seconds": 0.0}, producer=producer)
"""

# `farm worker` with another prefetch multiplier (--farm-prefetch): what prefetch is worth.
FARM_PREFETCHED = """
import sys
from workers.cli import main
from workers.commands import worker
plain = worker.worker_argv
def wider(*args, **kwargs):
    argv = plain(*args, **kwargs)
    argv[argv.index("--prefetch-multiplier") + 1] = sys.argv[1]
    return argv
worker.worker_argv = wider
sys.exit(main(sys.argv[2:]))
"""

# The solo-pool farm worker that --profile runs under cProfile: `farm worker`'s own settings
# (workers/profiles.py) but one process, so the profile holds fetch, task base and ack together.
FARM_PROFILED = """
import cProfile, sys
from config.settings import get_settings
from workers.profiles import get_profile, worker_argv
from config.celery_app import app
from workers import signals  # noqa: F401
argv = worker_argv(get_profile("batch"), get_settings(), concurrency=1, node="profiled")
argv[argv.index("prefork")] = "solo"
argv = argv[:argv.index("--max-tasks-per-child")]
profile = cProfile.Profile()
profile.enable()
try:
    app.worker_main(argv)
finally:
    profile.disable()
    profile.dump_stats(sys.argv[1])
"""


@dataclass
class System:
    name: str
    db: int
    fill: list[str]  # argv that publishes N (appended) messages
    worker: list[str]
    queue: str  # the list the worker takes messages from
    held: str  # the hash of messages taken but not yet acknowledged
    extra_dbs: tuple[int, ...] = ()  # emptied before each round (the farm's data Redis)
    env: dict[str, str] = field(default_factory=dict)
    snapshot: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Drain:
    rate: float  # tasks/s
    commands: dict[str, int]  # Redis command -> calls during the drain
    server_usec: float  # the server's CPU for those calls


def systems(server: EmbeddedRedis, scratch: Path, concurrency: int,
            farm_prefetch: int | None = None) -> list[System]:
    py = sys.executable
    c = str(concurrency)
    farm_env = {"FARM_BROKER_URL": server.url(0), "FARM_REDIS_URL": server.url(1),
                "FARM_ENV_FILE": os.devnull, "FARM_STATE_DIR": str(scratch / "state")}
    farm_cli = [py, "-m", "workers.cli"] if farm_prefetch is None else [
        py, "-c", FARM_PREFETCHED, str(farm_prefetch)]
    return [
        System("farm", 0, [py, "-c", FARM_FILL],
               [*farm_cli, "worker", "--profile", "batch", "--concurrency", c, "--node", "drain"],
               "maintenance", "unacked", (1,), farm_env),
        System("celery", 2, [py, "-m", "bench.drain_celery"],
               [py, "-m", "celery", "-A", "bench.drain_celery", "worker", "-P", "prefork", "-c",
                c, "-n", "stock@%h"],
               "celery", "unacked", env={"DRAIN_BROKER_URL": server.url(2)}),
        System("dramatiq", 3, [py, "-m", "bench.drain_dramatiq"],
               [py, "-m", "dramatiq", "bench.drain_dramatiq", "--processes", c],
               "dramatiq:default", "dramatiq:default.msgs",
               env={"DRAIN_BROKER_URL": server.url(3)}),
    ]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any FARM_* setting of the caller's, plus the system's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def fill(system: System, server: EmbeddedRedis, n: int) -> None:
    """Publish n messages through the system's own client once; keep its database's keys."""
    client = redis.Redis.from_url(server.url(system.db))
    client.flushdb()
    subprocess.run([*system.fill, str(n)], env=child_env(system.env), cwd=ROOT, check=True)
    dumps = {key: client.dump(key) for key in client.scan_iter(count=1000)}
    system.snapshot = {key: value for key, value in dumps.items() if value is not None}
    queued = client.llen(system.queue)
    if queued != n:
        raise RuntimeError(f"{system.name}: {queued} messages queued for {n} published")


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str],
            log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker (``argv`` with ``env`` over this environment) in its own process group,
    warm-stopped (SIGTERM) after."""
    from workers.embedded_redis import _die_with_parent

    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=child_env(env), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # the pool's children too: nothing of a round may run into the next one
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) since the server started."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()}


def drain_once(system: System, server: EmbeddedRedis, n: int, log: Path) -> Drain:
    client = redis.Redis.from_url(server.url(system.db))
    for db in (system.db, *system.extra_dbs):
        redis.Redis.from_url(server.url(db)).flushdb()
    pipe = client.pipeline(transaction=False)
    for key, value in system.snapshot.items():
        pipe.restore(key, 0, value)
    pipe.execute()
    polls: collections.Counter[str] = collections.Counter()
    held = system.held

    def backlog() -> int:
        polls["llen"] += 1
        return int(client.llen(system.queue))

    def pending() -> int:
        polls["llen"] += 1
        polls["hlen"] += 1
        p = client.pipeline(transaction=False)
        p.llen(system.queue)
        p.hlen(held)
        queued, taken = p.execute()
        return int(queued) + int(taken)

    with running(system.worker, system.env, log) as proc:
        wait(lambda: backlog() < n, START_PATIENCE, proc, system, log, "its first message")
        start = time.perf_counter()
        before = commandstats(client)
        polls.clear()
        wait(lambda: pending() == 0, START_PATIENCE + n / 20, proc, system, log, "the drain")
        elapsed = time.perf_counter() - start
        after = commandstats(client)
    polls["info"] += 1
    calls = {name: after[name][0] - before.get(name, (0, 0))[0] - polls[name] for name in after}
    usec = sum(after[name][1] - before.get(name, (0, 0))[1] for name in after if name != "info")
    return Drain(n / elapsed, {k: v for k, v in calls.items() if v > 0}, usec)


def wait(done: Callable[[], bool], patience: float, proc: subprocess.Popen[bytes],
         system: System, log: Path, what: str) -> None:
    deadline = time.monotonic() + patience
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{system.name}: no end to {what} (worker exit "
                               f"{proc.poll()}); its log:\n{tail}")
        time.sleep(POLL)


def profile_farm(system: System, server: EmbeddedRedis, n: int, scratch: Path,
                 top: int) -> None:
    """One solo-pool farm worker under cProfile drains the snapshot; its top functions."""
    import pstats

    out = scratch / "farm.prof"
    profiled = System(**{**system.__dict__, "worker": [sys.executable, "-c", FARM_PROFILED,
                                                       str(out)]})
    drain_once(profiled, server, n, scratch / "profiled.log")
    stats = pstats.Stats(str(out))
    rows = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, _)
    worked = [(key, row) for key, row in rows.items() if row[1] >= n // 2]
    total = sum(row[2] for _, row in rows.items())
    print(f"farm, cProfile of one solo-pool worker draining {n}: {total / n * 1e6:.0f} us of "
          f"profiled time per task; top functions by own time (calls per task, us per task "
          f"own / with callees):")
    for (path, line, name), row in sorted(worked, key=lambda kv: kv[1][2], reverse=True)[:top]:
        where = path if path.startswith("~") else f"{_short(path)}:{line}"
        print(f"  {row[1] / n:>5.1f}  {row[2] / n * 1e6:>6.1f} / {row[3] / n * 1e6:>7.1f} us  "
              f"{name}  {where}")
    for label, match in PHASES:
        hits = [row for (path, _, name), row in rows.items() if match(_short(path), name)]
        if hits:
            spent = max(row[3] for row in hits)
            print(f"  phase {label:<34} {spent / n * 1e6:>7.1f} us per task (with callees)")


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# Phases of one farm task, as functions whose cumulative time covers each (the largest match).
PHASES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("fetch script sent (reliable_fetch.lua)", lambda p, n: p == "config/reliable_redis.py"
     and n in ("_brpop_start", "_get")),
    ("delivered (in a solo worker: the whole task)", lambda p, n: p == "config/reliable_redis.py"
     and n == "_deliver_raw"),
    ("  screening (workers/consumer.py)", lambda p, n: p == "workers/consumer.py"
     and n == "screen"),
    ("  task base (FarmTask.__call__)", lambda p, n: p == "tasks/core/base.py"
     and n == "__call__"),
    ("    delivery counter (restored only)", lambda p, n: p == "tasks/core/base.py"
     and n == "_count_delivery"),
    ("    argument check", lambda p, n: p == "tasks/core/validation.py" and n == "check"),
    ("    timing line + counters", lambda p, n: p == "tasks/core/base.py" and n == "_report"),
    ("  Prometheus hooks", lambda p, n: p == "workers/metrics.py"
     and n in ("_on_prerun", "_on_postrun")),
    ("  task events buffered", lambda p, n: p.startswith("celery/events/") and n == "send"),
    ("  ack", lambda p, n: p.startswith("kombu/") and n == "basic_ack"),
    ("task events sent (batched flush)", lambda p, n: p.startswith("celery/events/")
     and n == "flush"),
    ("logging (all records)", lambda p, n: p.endswith("logging/__init__.py")
     and n == "callHandlers"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000, help="messages per drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one solo-pool farm worker draining the same tasks")
    parser.add_argument("--top", type=int, default=15, help="functions shown by --profile")
    parser.add_argument("--farm-prefetch", type=int, metavar="M",
                        help="run the farm's worker with --prefetch-multiplier M instead of its "
                        "profile's 1 (an experiment: what prefetch is worth)")
    opts = parser.parse_args(argv)
    n = opts.tasks

    with tempfile.TemporaryDirectory(prefix="farm-bench-drain-") as tmp, \
            EmbeddedRedis() as server:
        scratch = Path(tmp)
        every = systems(server, scratch, opts.concurrency, opts.farm_prefetch)
        for system in every:
            fill(system, server, n)
        prefetch = "" if opts.farm_prefetch is None else (
            f" (farm: prefetch multiplier {opts.farm_prefetch})")
        print(f"{n} no-op tasks per drain, {opts.concurrency} worker processes each{prefetch}, "
              f"{opts.rounds} rounds in rotating order, {os.cpu_count()} cores; one embedded "
              f"Redis for all", flush=True)
        drains: dict[str, list[Drain]] = {s.name: [] for s in every}
        for r in range(opts.rounds):
            for system in every[r % 3:] + every[:r % 3]:
                drains[system.name].append(
                    drain_once(system, server, n, scratch / f"{system.name}.log"))
        if opts.profile:
            profile_farm(every[0], server, n, scratch, opts.top)

    medians: dict[str, float] = {}
    for name, runs in drains.items():
        rates = [d.rate for d in runs]
        medians[name] = statistics.median(rates)
        print(f"{name:<9} median {medians[name]:>7,.0f} tasks/s  (min {min(rates):,.0f}, max "
              f"{max(rates):,.0f}, {len(rates)} rounds of {n})")
    for name, runs in drains.items():
        last = runs[-1]
        shown = ", ".join(f"{cmd} {calls / n:.2f}" for cmd, calls in
                          sorted(last.commands.items(), key=lambda kv: -kv[1]) if calls / n >= 0.01)
        print(f"{name:<9} Redis commands per task {sum(last.commands.values()) / n:5.2f} "
              f"(server CPU {last.server_usec / n:5.1f} us/task): {shown}")
    farm = medians["farm"]
    print(f"farm / celery {farm / medians['celery']:.2f}, farm / dramatiq "
          f"{farm / medians['dramatiq']:.2f} (goal: >= 1 and >= 0.5)")


if __name__ == "__main__":
    main()
