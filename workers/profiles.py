"""Named worker profiles: which queues a worker serves, with which pool, how wide.

CPU-bound work (resizing) runs in prefork processes, about one per core; network-bound work runs
in threads, so one process holds many requests in flight. Batch queues get their own profile so a
backfill never sits in front of a user's own post.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config.queues import Q, check_queues
from config.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

# What `--pool prefork` means in a farm worker: Celery's prefork pool, except that a warm shutdown
# never drops a task a child already holds and acks what finishes at once (workers/prefork.py).
# `farm worker` sets it as Celery's worker_pool, which the CLI's --pool prefork defers to.
PREFORK_POOL = "workers.prefork:TaskPool"


@dataclass(frozen=True)
class Profile:
    name: str
    queues: tuple[str, ...]
    pool: str  # "prefork" or "threads"
    concurrency: Callable[[Settings], int]
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("cpu", (Q.PHOTOS,), "prefork", lambda s: s.cpu_workers,
                "resizing: one prefork process per core (FARM_CPU_CONCURRENCY)"),
        Profile("feed", (Q.FEEDS,), "prefork", lambda s: s.feed_concurrency,
                "feed fan-out and upkeep (FARM_FEED_CONCURRENCY)"),
        Profile("io", (Q.PUSH, Q.SOCIAL, Q.WEBHOOKS), "threads", lambda s: s.io_threads,
                "push, cross-posts, webhooks: threads per process (FARM_IO_THREADS)"),
        Profile("batch", (Q.PHOTOS_BATCH, Q.FEEDS_BATCH, Q.WEBHOOKS_BATCH, Q.MAINTENANCE),
                "prefork", lambda s: s.batch_concurrency,
                "backfills, rebuilds, replays, beat's jobs (FARM_BATCH_CONCURRENCY)"),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown worker profile {name!r}; known: {', '.join(PROFILES)}") from None


def worker_argv(profile: Profile, s: Settings, *, queues: list[str] | None = None,
                concurrency: int | None = None, node: str | None = None) -> list[str]:
    """The `celery worker` arguments for a profile."""
    argv = [
        "worker",
        "--queues", ",".join(check_queues(queues) if queues else profile.queues),
        "--pool", profile.pool,
        "--concurrency", str(concurrency or profile.concurrency(s)),
        "--hostname", f"{node or profile.name}@%h",
        "--loglevel", s.log_level.upper(),
        "--prefetch-multiplier", "1",
        "--task-events",
        # 200 processes gossiping and mingling on start-up is noise; Flower uses events.
        "--without-mingle",
        "--without-gossip",
    ]
    if profile.pool == "prefork":  # recycles a child that leaks; meaningless for threads
        argv += ["--max-tasks-per-child", str(s.max_tasks_per_child), "-O", "fair"]
    return argv


def start_worker(app: Celery, argv: list[str]) -> int:
    """Run ``celery worker`` with ``argv`` (from :func:`worker_argv`) through Celery's own
    ``worker`` command, parsed and started exactly as ``app.worker_main`` does, but without the
    rest of Celery's CLI: importing that loads its amqp REPL (click-repl, prompt_toolkit) and
    every installed plugin (Flower, tornado) into each worker process, 13 MiB of private memory
    apiece (an io process: 50 -> 37 MiB PSS) that the farm's 200 processes never use. Returns
    the exit code."""
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    # no_color None, as Celery's CLI leaves it without -C: colour only on a terminal
    context = CLIContext(app=app, no_color=None, workdir=None)  # type: ignore[arg-type]
    code = worker.main(args=argv[1:], prog_name="celery worker", standalone_mode=False,
                       obj=context)
    return int(code or 0)
