"""`farm batch NAME [USER_ID ...] | --list`: run one batch job in-process, for system cron or an
operator.

It takes the same lock as the job's beat task, so a by-hand run and a scheduled run never overlap.
Jobs with no period are on demand only; a job that takes users (feed-rebuild) needs their ids.
A progress bar goes to stderr when stdout is a terminal; otherwise one plain line per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import redis

from schedules.batch import JOBS, Scheduled, get_job
from tasks.core.jobs import LockLost, run_job

EPILOG = """exit status:
  0  the job ran, or was skipped because another run of it holds its lock
     (prints "NAME: skipped: already running"; the lock makes overlap a normal event)
  1  the job failed: Redis unreachable, or its lock expired under it
  2  unknown job or bad usage: user ids missing, given to a job that takes none,
     or refused (not ids between 1 and 2**53-1); nothing is done"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("batch", help="run a batch job now (as beat would), or list them",
                       description="Run a batch job in-process, under the lock its beat task "
                       "takes.\n\njobs:\n" + "\n".join(
                           f"  {j.name:<18} {when(j):<10} {j.job.description}"
                           for j in JOBS.values()),
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help=f"one of {', '.join(JOBS)}")
    p.add_argument("users", nargs="*", metavar="USER_ID",
                   help="user ids, for the jobs that take them ("
                   f"{', '.join(j.name for j in JOBS.values() if j.job.takes_users)})")
    p.add_argument("--list", action="store_true",
                   help="list the jobs with their periods (or \"on demand\")")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=run)


def every(period: timedelta) -> str:
    secs = int(period.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def when(job: Scheduled) -> str:
    """``every 1h``, or ``on demand`` for a job beat never runs."""
    return "on demand" if job.period is None else f"every {every(job.period)}"


class BarProgress:
    """One redrawn line on a terminal: ``sweep  reindex  [######......]  120/300``."""

    WIDTH = 30
    INTERVAL = 0.1  # redraws per second are capped; a terminal is slower than SCAN

    def __init__(self, job: str, stream: TextIO) -> None:
        self.job, self.stream = job, stream
        self.step: str | None = None
        self.drawn = 0.0

    def __call__(self, step: str, done: int, total: int | None) -> None:
        new_step = step != self.step
        if new_step and self.step is not None:
            self.stream.write("\n")
        self.step = step
        now = time.monotonic()
        if not new_step and now - self.drawn < self.INTERVAL and done != total:
            return
        self.drawn = now
        if total:
            filled = min(self.WIDTH, self.WIDTH * done // total)
            shown = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
        else:
            shown = f"{done} so far" if total is None else "[nothing to do] 0/0"
        self.stream.write(f"\r\x1b[K{self.job}  {step:<8} {shown}")
        self.stream.flush()

    def close(self) -> None:
        if self.step is not None:
            self.stream.write("\n")
            self.stream.flush()


class LineProgress:
    """Plain lines for logs and cron mail: one per finished step, and one every INTERVAL seconds
    while a long step runs, so a log shows the job is alive."""

    INTERVAL = 10.0

    def __init__(self, job: str, stream: TextIO) -> None:
        self.job, self.stream = job, stream
        self.step: str | None = None
        self.last: tuple[int, int | None] = (0, None)
        self.printed = time.monotonic()

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if step != self.step:
            self._line()
            self.step, self.printed = step, time.monotonic()
        self.last = (done, total)
        if time.monotonic() - self.printed >= self.INTERVAL:
            self._line(running=True)

    def _line(self, running: bool = False) -> None:
        if self.step is None:
            return
        done, total = self.last
        of = f"/{total}" if total is not None else ""
        print(f"{self.job}: {self.step} {done}{of}{' ...' if running else ''}", file=self.stream,
              flush=True)
        self.printed = time.monotonic()

    def close(self) -> None:
        self._line()
        self.step = None


def _shown(key: str, value: Any) -> str:
    if key.endswith("_at") and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return json.dumps(value) if isinstance(value, (dict, list)) or value is None else str(value)


def run(args: argparse.Namespace) -> int:
    if args.list:
        width = max(map(len, JOBS))
        for scheduled in JOBS.values():
            print(f"{scheduled.name:<{width}}  {when(scheduled):<10} {scheduled.job.task:<24} "
                  f"{scheduled.job.description}")
        return 0
    if not args.name:
        print(f"farm batch: name a job ({', '.join(JOBS)}) or pass --list", file=sys.stderr)
        return 2
    try:
        job = get_job(args.name).job
    except ValueError as exc:
        print(f"farm batch: {exc}", file=sys.stderr)
        return 2
    users: list[int] = []
    for raw in args.users:
        try:
            users.append(int(raw))
        except ValueError:
            print(f"farm batch: user ids must be integers, got {raw!r}", file=sys.stderr)
            return 2
    try:
        job.check_users(users)
    except ValueError as exc:
        usage = f" (farm batch {job.name} USER_ID [USER_ID ...])" if not users else ""
        print(f"farm batch: {exc}{usage}", file=sys.stderr)
        return 2

    from config.settings import get_settings
    from tasks.core.redis import data_redis

    # With --json, stdout carries the one JSON object alone: plain progress lines go to stderr.
    progress = (BarProgress(job.name, sys.stderr) if sys.stdout.isatty()
                else LineProgress(job.name, sys.stderr if args.json else sys.stdout))
    try:
        result = run_job(job, data_redis(), get_settings(), progress, users)
    except (redis.RedisError, LockLost) as exc:
        progress.close()
        print(f"farm batch: {job.name} failed: {exc}", file=sys.stderr)
        return 1
    progress.close()
    if args.json:
        print(json.dumps(result))
    elif result["status"] == "skipped":
        print(f"{job.name}: skipped: already running")
    else:
        print(f"{job.name}: done")
        for key, value in result.items():
            if key not in ("job", "status"):
                print(f"  {key}: {_shown(key, value)}")
    return 0
