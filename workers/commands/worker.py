"""`farm worker --profile NAME`: run one Celery worker for a profile."""

from __future__ import annotations

import argparse
import sys

from config.queues import check_queues
from config.settings import get_settings
from workers import sentry
from workers.checks import check_worker
from workers.logs import drop_celery_task_lines, hold_wire_loggers
from workers.profiles import PREFORK_POOL, PROFILES, get_profile, start_worker, worker_argv


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a worker for one profile",
                       description="Profiles: " + "; ".join(
                           f"{n}: {pr.description}" for n, pr in PROFILES.items()))
    p.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)}")
    p.add_argument("--queues", help="comma-separated subset of queues to serve instead")
    p.add_argument("--concurrency", type=int, help="override the profile's width")
    p.add_argument("--node", help="node name before @host (unique per host; default: profile)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        profile = get_profile(args.profile)
        queues = check_queues(args.queues.split(",")) if args.queues else None
        if args.concurrency is not None and args.concurrency < 1:
            # Celery would refuse it only inside its own CLI, with a traceback
            raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    except ValueError as exc:
        print(f"farm worker: {exc}", file=sys.stderr)
        return 2
    s = get_settings()  # validates the environment before Celery starts
    check_worker(s, queues or profile.queues)  # and the files it names (APNs keys)
    hold_wire_loggers(s)  # before the worker logs at FARM_LOG_LEVEL (and forks children)
    drop_celery_task_lines(s)
    sentry.init(s, f"worker {profile.name}")  # when FARM_SENTRY_DSN is set; before any fork
    from config.celery_app import app
    from workers import signals  # noqa: F401  (connects the worker hooks)

    if profile.pool == "prefork":  # the CLI's --pool prefork defers to this setting
        app.conf.worker_pool = PREFORK_POOL

    return start_worker(app, worker_argv(profile, s, queues=queues, concurrency=args.concurrency,
                                         node=args.node))
