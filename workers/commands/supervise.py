"""`farm supervise [-- supervisord args]` runs the whole farm under supervisord;
`farm supervise ctl ARGS` runs supervisorctl against it.

supervisord fails on any %(ENV_X)s it cannot expand, so this command validates the settings and
exports every value supervisord.conf uses before it execs supervisord in its own place.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from config.settings import Settings, as_environ, get_settings

CONF = Path(__file__).resolve().parents[2] / "supervisord.conf"

# A task may run up to FARM_TASK_TIME_LIMIT; the margin covers the warm shutdown after it
# (acks, the result write, the pool closing) before supervisord resorts to SIGKILL.
STOP_MARGIN = 30


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("supervise", help="run the whole farm under supervisord",
                       description="Run supervisord with supervisord.conf (`farm supervise -- "
                                   "--loglevel=debug`), or `farm supervise ctl status` to run "
                                   "supervisorctl against the running farm.")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="supervisord arguments after `--`, or `ctl` and supervisorctl arguments")
    p.set_defaults(handler=run)


def _bin(name: str) -> str | None:
    # supervisord is a pinned dependency, installed beside this interpreter.
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def farm_command() -> str:
    """The `farm` command as one shell word (or more), for supervisord's command lines."""
    script = Path(sys.executable).parent / "farm"
    if script.is_file():
        return shlex.quote(str(script))
    return shlex.join([sys.executable, "-m", "workers.cli"])


def supervise_environ(s: Settings, home: Path) -> dict[str, str]:
    """Every variable supervisord.conf expands: the settings (no secrets) and computed values."""
    env = as_environ(s)
    # Absolute, so the socket path is the same for supervisorctl run from anywhere.
    env["FARM_STATE_DIR"] = str((home / s.state_dir).resolve())
    env.update({
        "PHOTOFARM_HOME": str(home.resolve()),
        "PHOTOFARM_FARM": farm_command(),
        "PHOTOFARM_CPU_CONCURRENCY": str(s.cpu_workers),
        "PHOTOFARM_STOPWAITSECS": str(s.task_time_limit + STOP_MARGIN),
    })
    return env


def run(args: argparse.Namespace) -> int:
    s = get_settings()  # a bad FARM_* value stops here with one line naming it
    rest = list(args.args)
    ctl = rest[:1] == ["ctl"]
    program = _bin("supervisorctl" if ctl else "supervisord")
    if program is None or not CONF.is_file():
        print(f"farm supervise: needs supervisor installed and {CONF}", file=sys.stderr)
        return 1
    env = supervise_environ(s, Path.cwd())
    if ctl:
        argv = [program, "-c", str(CONF), *rest[1:]]
    else:
        from workers.commands.flower import check_exposure

        check_exposure(s)  # refuse now, not in a restart loop under supervisord
        Path(env["FARM_STATE_DIR"], "log").mkdir(parents=True, exist_ok=True)
        argv = [program, "-n", "-c", str(CONF), *(rest[1:] if rest[:1] == ["--"] else rest)]
    sys.stdout.flush()
    os.execve(program, argv, {**os.environ, **env})
