"""`farm beat`: the farm's one Celery beat, keeping its schedule file under FARM_STATE_DIR.

Exactly one runs per farm: supervisord's program `beat` (numprocs=1); two would send every
periodic job twice. No pidfile: a stale one left on a persistent state dir blocks the next start
whenever its pid has been reused (routine in containers), and supervisord already ensures one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from config.settings import SettingsError, get_settings
from workers import sentry
from workers.logs import hold_wire_loggers

SCHEDULE_FILE = "celerybeat-schedule"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("beat", help="run the periodic-job scheduler (exactly one per farm)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    s = get_settings()
    state = s.state_dir.resolve()
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)  # the schedule is the farm's alone
    except OSError as exc:
        raise SettingsError(f"FARM_STATE_DIR: cannot create {state}: {exc.strerror}") from None
    hold_wire_loggers(s)
    sentry.init(s, "beat")  # when FARM_SENTRY_DSN is set
    from config.celery_app import app
    from schedules.beat import install

    install(app, s)
    # celery-types declares start NoReturn; it returns the command's exit code, or None.
    start: Callable[[list[str]], int | None] = app.start
    return start(["beat", "--schedule", str(state / SCHEDULE_FILE),
                  "--loglevel", s.log_level.upper()]) or 0
