"""The whole farm, measured: `farm supervise` with its default sizing on its own server.
Long because one run starts, loads, measures and stops a whole supervised farm, and each
step needs the process tree the one before built.

    python -m bench.farm [--small] [--io-procs N] [--io-threads N]     (or: farm bench farm)

Starts an embedded server, then the full default `farm supervise` (every FARM_* sizing left at
its default unless an option says otherwise) with its own FARM_STATE_DIR, a file:// blob store
in a temporary directory and free ports for Flower and the metrics endpoint. It reports:

- start: from exec to every program RUNNING and every worker node answering a control ping;
- processes and total PSS (/proc/<pid>/smaps_rollup of every process in supervisord's tree)
  idle, once the process count has held still for a few seconds after the start;
- PSS under a mixed load sent through the enqueue API (uploads with originals in the file
  store, follows, activity entries, pushes to users with no device), its peak and after the
  load drained, with the load's task rate;
- stop: SIGTERM to supervisord until it exits; then that no process of its tree and no server
  is left behind.

The baseline, measured in the same run: one bare stock Celery worker (threads pool, no farm
code) on the same server; its PSS times the farm's process count is what the farm would cost as
that many independent stock Celery processes. The last line holds the ratios (farm / baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

FARM = Path(sys.executable).parent / "farm"
STEADY = 5.0  # seconds the process count must hold still before the idle figure is taken
START_TIMEOUT = 300.0  # the full farm starts in ~20 s on 2 cores; generous for a busy machine
MIB = 1024 * 1024

# A bare Celery worker: stock app, no farm code, the URL from its environment (never argv).
BARE = """
import os
from celery import Celery
app = Celery("bare", broker=os.environ["BARE_BROKER_URL"])
app.worker_main(["worker", "--pool", "threads", "--concurrency", "4", "--queues", "bare",
                 "--hostname", "bare@%h", "--without-mingle", "--without-gossip",
                 "--loglevel", "WARNING"])
"""


# --- processes ------------------------------------------------------------------------------

def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time in clock ticks) of every live (not zombie) process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[19]))
    return table


def tree(root: int) -> dict[int, int]:
    """pid -> start time of ``root`` and every live descendant."""
    table = proc_table()
    if root not in table:
        return {}
    found = {root: table[root][1]}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found.keys()
        found.update((pid, table[pid][1]) for pid in frontier)
    return found


def pss(pids: Iterable[int]) -> int:
    """Total proportional set size in bytes (shared pages split between their sharers)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def cmd_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"bench farm: timed out after {timeout:g}s waiting for {what}")


# --- the farm -------------------------------------------------------------------------------

class Farm:
    """`farm supervise` in its own session, with the environment it and supervisorctl use."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, int] = {}  # every pid of the tree ever seen -> start time

    def start(self) -> None:
        with open(self.home / "supervise.out", "wb") as out:
            self.proc = subprocess.Popen([str(FARM), "supervise"], env=self.env, cwd=self.home,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> dict[int, int]:
        now = tree(self.pid)
        self.seen.update(now)
        return now

    def status(self) -> dict[str, str]:
        out = subprocess.run([str(FARM), "supervise", "ctl", "status"], env=self.env,
                             cwd=self.home, capture_output=True, text=True, timeout=60).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines()
                if len(line.split()) > 1}

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.home / "supervise.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bench farm: supervisord exited {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 120.0) -> float:
        """SIGTERM to supervisord; seconds until it has exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - t0

    def left_behind(self) -> list[int]:
        """Processes of the tree still alive (same pid and start time) after the stop."""
        table = proc_table()
        return [pid for pid, started in self.seen.items()
                if pid in table and table[pid][1] == started]

    def kill(self) -> None:
        """After a failure only: SIGKILL what is left of the tree."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def expected_programs(io_procs: int) -> set[str]:
    return {"workers:cpu", "workers:feed", "workers:batch", "beat", "flower", "metrics",
            *(f"workers:io-{n:02d}" for n in range(io_procs))}


def expected_nodes(io_procs: int) -> set[str]:
    return {"cpu", "feed", "batch", *(f"io-{n:02d}" for n in range(io_procs))}


def answering_nodes(app: Any) -> set[str]:
    replies = app.control.ping(timeout=1.0) or []
    return {name.split("@")[0] for reply in replies for name in reply}


def settle(farm: Farm, steady: float, timeout: float) -> tuple[int, int]:
    """(processes, PSS) once the tree's process count has held still ``steady`` seconds."""
    count, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        farm.check_alive()
        now = len(farm.pids())
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= steady:
            return count, pss(farm.pids())
        time.sleep(0.5)
    raise RuntimeError(f"bench farm: the process count never held still for {steady:g}s")


# --- the load -------------------------------------------------------------------------------

def original_jpeg() -> bytes:
    """A phone-sized photo-like JPEG, made on the spot (deterministic)."""
    from PIL import Image

    size = (2016, 1512)
    im = Image.merge("RGB", (Image.linear_gradient("L").resize(size),
                             Image.effect_mandelbrot(size, (-2.2, -1.2, 0.8, 1.2), 64),
                             Image.radial_gradient("L").resize(size)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def send_load(uploads: int, users: int) -> int:
    """The mixed load through the enqueue API; returns the messages sent."""
    from tasks import enqueue
    from tasks.blobs import open_store

    store = open_store()
    photo = original_jpeg()
    sent = 0
    followees = range(1, 6)
    for follower in range(10, 10 + users):  # every follower follows the five posters
        for followee in followees:
            enqueue.user_followed(follower, followee)
            sent += 1
    for n in range(uploads):
        key = f"originals/bench-{n}.jpg"
        store.put(key, photo, content_type="image/jpeg")
        enqueue.photo_uploaded(9_000_000 + n, followees[n % len(followees)], key, caption="bench")
        sent += 1
    for n in range(users):  # users with no device: the registry is read, nothing is sent
        enqueue.notify_users([10 + n, 11 + n], "bench", badge=1)
        enqueue.activity(10 + n, "like", 1 + n % 5, photo_id=9_000_000 + n % max(1, uploads))
        sent += 2
    return sent


def finished(s: Any, outcome: str | None = None) -> float:
    """Tasks finished so far (with ``outcome``: only those that ended so)."""
    from tasks.core import metrics
    from tasks.core.redis import data_redis

    done = metrics.read(data_redis(), s)
    return sum(v for t in done.values() for k, v in t.items()
               if k != "ms" and (outcome is None or k == outcome))


def under_load(farm: Farm, s: Any, uploads: int, users: int,
               timeout: float) -> tuple[int, int, int, float, float]:
    """Sends the load, samples PSS until it has drained: (peak processes, peak PSS, sent,
    tasks finished, seconds to drain)."""
    import threading

    from workers.commands.stats import queue_depths

    before = finished(s)
    peak_n = peak = 0
    sent: list[int] = []
    t0 = time.monotonic()
    sender = threading.Thread(target=lambda: sent.append(send_load(uploads, users)))
    sender.start()
    last, quiet_since = -1.0, time.monotonic()
    deadline = time.monotonic() + timeout
    while True:
        farm.check_alive()
        pids = farm.pids()
        total = pss(pids)
        if total > peak:
            peak, peak_n = total, len(pids)
        done = finished(s) - before
        if done != last:
            last, quiet_since = done, time.monotonic()
        if not sender.is_alive() and not sent:
            raise RuntimeError("bench farm: sending the load failed (its traceback is above)")
        # every message sent has run (their follow-on tasks too, once nothing is queued and no
        # task has finished for 2 s)
        idle = bool(sent) and done >= sent[0] and not any(queue_depths(s).values())
        if idle and time.monotonic() - quiet_since >= 2.0:
            return peak_n, peak, sent[0], done, quiet_since - t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench farm: the load did not drain in {timeout:g}s")
        time.sleep(0.25)


# --- the baseline ---------------------------------------------------------------------------

def bare_celery_pss(env: dict[str, str], steady: float) -> int:
    """PSS of one stock Celery worker (threads pool), once it answers a ping and is still."""
    from config.celery_app import app

    proc = subprocess.Popen([sys.executable, "-c", BARE], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "bare" in answering_nodes(app), 60, "the bare Celery worker")
        time.sleep(steady)  # a lone idle process: nothing to watch settle but time
        return pss(tree(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--io-procs", type=int, help="FARM_IO_PROCS (default: the farm's)")
    parser.add_argument("--io-threads", type=int, help="FARM_IO_THREADS (default: the farm's)")
    parser.add_argument("--small", action="store_true",
                        help="a small farm for a smoke test: 2 io processes of 2 threads, 1 "
                             "child per prefork worker, a light load")
    parser.add_argument("--uploads", type=int, help="photos uploaded in the load (default 60)")
    parser.add_argument("--users", type=int, help="followers in the load (default 200)")
    parser.add_argument("--steady", type=float, default=STEADY,
                        help="seconds the process count must hold still (idle figure)")
    opts = parser.parse_args(argv)
    uploads = opts.uploads if opts.uploads is not None else (2 if opts.small else 60)
    users = opts.users if opts.users is not None else (10 if opts.small else 200)

    from workers.embedded_redis import EmbeddedRedis, free_port

    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, EmbeddedRedis() as server:
        home = Path(tmp)
        sizing: dict[str, str] = {}
        if opts.small:
            sizing = {"FARM_CPU_CONCURRENCY": "1", "FARM_FEED_CONCURRENCY": "1",
                      "FARM_IO_PROCS": "2", "FARM_IO_THREADS": "2",
                      "FARM_BATCH_CONCURRENCY": "1"}
        if opts.io_procs:
            sizing["FARM_IO_PROCS"] = str(opts.io_procs)
        if opts.io_threads:
            sizing["FARM_IO_THREADS"] = str(opts.io_threads)
        farm_env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        farm_env.update({
            "FARM_ENV_FILE": os.devnull,  # this run's settings only, not a .env's
            "FARM_BROKER_URL": server.url(0), "FARM_REDIS_URL": server.url(1),
            "FARM_STORAGE_URL": f"file://{home / 'blobs'}",
            "FARM_STATE_DIR": str(home / "state"),
            "FARM_FLOWER_PORT": str(free_port()), "FARM_METRICS_PORT": str(free_port()),
            **sizing})
        os.environ.update(farm_env)  # this process's enqueue API and control pings too
        from config.settings import get_settings

        get_settings.cache_clear()  # read again, with this run's server in the environment
        s = get_settings()
        from config.celery_app import app

        bare = bare_celery_pss({**farm_env, "BARE_BROKER_URL": server.url(0)}, opts.steady)

        farm = Farm(farm_env, home)
        nodes = expected_nodes(s.io_procs)
        programs = expected_programs(s.io_procs)
        try:
            t0 = time.monotonic()
            farm.start()

            def up() -> bool:
                farm.check_alive()
                farm.pids()
                return farm.status() == dict.fromkeys(programs, "RUNNING")

            wait_for(up, START_TIMEOUT, "every program RUNNING", interval=0.5)
            answered: set[str] = set()

            def pinged() -> bool:
                answered.update(answering_nodes(app))
                return nodes <= answered

            wait_for(pinged, START_TIMEOUT, "every worker node answering a ping", interval=0)
            start_s = time.monotonic() - t0
            idle_n, idle = settle(farm, opts.steady, START_TIMEOUT)
            by_program = breakdown(farm)
            load_n, load_peak, sent, done, drain_s = under_load(farm, s, uploads, users, 600)
            after_n, after = settle(farm, opts.steady, 120)
            drained = breakdown(farm)
            dead = finished(s, "deadletter")
            stop_s = farm.stop()
        except BaseException:
            farm.kill()
            raise
        left = farm.left_behind()
        server_proc = server.proc
    server_left = server_proc is not None and server_proc.poll() is None

    sized = (f"cpu {s.cpu_workers}, feed {s.feed_concurrency}, io {s.io_procs} x "
             f"{s.io_threads} threads, batch {s.batch_concurrency}")
    print(f"farm ({sized}): {idle_n} processes, started in {start_s:.1f} s (every program "
          f"RUNNING, {len(nodes)} worker nodes answering a ping)")
    for name, (n, size) in by_program.items():
        loaded = drained.get(name, (0, 0))[1]
        print(f"  {name:<11} {n:>4} processes  {size / MIB:>6.0f} MiB PSS idle, "
              f"{loaded / MIB:>6.0f} MiB after the load")
    print(f"idle        {idle / MIB:>8.0f} MiB PSS  ({idle / MIB / idle_n:.1f} MiB a process)")
    print(f"under load  {load_peak / MIB:>8.0f} MiB PSS peak ({load_n} processes), "
          f"{after / MIB:.0f} MiB once drained ({after_n} processes); {sent} messages sent, "
          f"{done:.0f} tasks run ({dead:.0f} dead-lettered) in {drain_s:.1f} s "
          f"({done / drain_s:.0f} tasks/s)")
    print(f"stopped in  {stop_s:.1f} s; left behind: {len(left)} processes of the tree, "
          f"{'a' if server_left else 'no'} server")
    baseline = bare * idle_n
    print(f"baseline    {bare / MIB:>8.1f} MiB PSS one bare stock Celery worker (threads pool) "
          f"x {idle_n} processes = {baseline / MIB:.0f} MiB")
    print(f"farm / baseline: idle PSS {idle / baseline:.3f}, under load {load_peak / baseline:.3f}")
    if left or server_left:
        sys.exit(1)


def breakdown(farm: Farm) -> dict[str, tuple[int, int]]:
    """Processes and PSS per program (supervisord's direct children and their trees)."""
    table = proc_table()
    out: dict[str, tuple[int, int]] = {"supervisord": (1, pss([farm.pid]))}
    for pid, (ppid, _) in table.items():
        if ppid != farm.pid:
            continue
        words = cmd_of(pid).split()
        name = words[words.index("--profile") + 1] if "--profile" in words else (
            words[2] if len(words) > 2 else "?")
        sub = tree(pid)
        n, size = out.get(name, (0, 0))
        out[name] = (n + len(sub), size + pss(sub))
    return out


if __name__ == "__main__":
    main()
