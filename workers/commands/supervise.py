"""`farm supervise [-- supervisord args]` runs the whole farm under supervisord;
`farm supervise ctl ARGS` runs supervisorctl against it.

supervisord fails on any %(ENV_X)s it cannot expand, so this command validates the settings and
exports every value supervisord.conf uses before it execs supervisord in its own place.

Private by default: the state dir is 0700 and supervisord runs with umask 077, so the logs it
writes (they hold task arguments) are 0600. Secrets are kept out of supervisord's environment,
which every program inherits: each one set is written to a 0600 file under the state dir and
only the programs that use it get its FARM_<NAME>_FILE path (workers: storage, token and social
secrets; Flower: its password; beat: none), so no /proc/<pid>/environ holds a secret's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
from pathlib import Path

from config.settings import PREFIX, Settings, SettingsError, as_environ, get_settings

CONF = Path(__file__).resolve().parents[2] / "supervisord.conf"

# A task may run up to FARM_TASK_TIME_LIMIT; the margin covers the warm shutdown after it
# (acks, the result write, the pool closing) before supervisord resorts to SIGKILL.
STOP_MARGIN = 30

SECRETS_DIR = "secrets"  # under FARM_STATE_DIR, 0700; one 0600 file per secret set
FLOWER_SECRETS = frozenset({"flower_password"})  # Flower's own; every other secret is the workers'
METRICS_SECRETS = frozenset({"metrics_password"})  # the scrape endpoint's own (`farm metrics`)
# Every program that reaches the broker or the data Redis through Sentinel needs this one too.
SHARED_SECRETS = frozenset({"sentinel_password"})
UMASK = 0o077  # files supervisord and the farm create: the logs, the beat schedule, blobs


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


def secret_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret")]


def secret_files(s: Settings, state: Path) -> dict[str, tuple[Path, str]]:
    """Each secret that is set: its file under ``state`` and its value."""
    return {name: (state / SECRETS_DIR / name, getattr(s, name)) for name in secret_names()
            if getattr(s, name)}


def program_secrets(files: dict[str, tuple[Path, str]], flower: bool,
                    metrics: bool = False) -> str:
    """supervisord's ``environment=`` value: the _FILE variables of Flower's secrets, the
    metrics endpoint's, or the workers' (every other; quoted: a path may hold a comma)."""
    own = FLOWER_SECRETS if flower else METRICS_SECRETS if metrics else None
    pairs = [f'{PREFIX}{name.upper()}_FILE="{path}"' for name, (path, _) in files.items()
             if (name in own | SHARED_SECRETS if own is not None else
                 name not in FLOWER_SECRETS | METRICS_SECRETS)]
    return ",".join(pairs)


def write_secrets(files: dict[str, tuple[Path, str]], state: Path) -> None:
    """Write each secret to its file, created 0600; files of secrets no longer set go."""
    folder = state / SECRETS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for stale in folder.iterdir():
        stale.unlink()
    for path, value in files.values():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")


def without_secrets(environ: dict[str, str]) -> dict[str, str]:
    """supervisord's own environment, which every program inherits: no secret, no secret file
    (each program gets its own through ``environment=``), and no .env, whose secrets it would
    read again (every other setting is exported here)."""
    names = {f"{PREFIX}{n.upper()}{suffix}" for n in secret_names() for suffix in ("", "_FILE")}
    return {**{k: v for k, v in environ.items() if k not in names},
            "FARM_ENV_FILE": os.devnull}


def supervise_environ(s: Settings, home: Path) -> dict[str, str]:
    """Every variable supervisord.conf expands: the settings (no secrets) and computed values."""
    env = as_environ(s)
    # Absolute, so the socket path is the same for supervisorctl run from anywhere.
    state = (home / s.state_dir).resolve()
    env["FARM_STATE_DIR"] = str(state)
    files = secret_files(s, state)
    env.update({
        "PHOTOFARM_HOME": str(home.resolve()),
        "PHOTOFARM_FARM": farm_command(),
        "PHOTOFARM_CPU_CONCURRENCY": str(s.cpu_workers),
        "PHOTOFARM_STOPWAITSECS": str(s.task_time_limit + STOP_MARGIN),
        "PHOTOFARM_WORKER_SECRETS": program_secrets(files, flower=False),
        "PHOTOFARM_FLOWER_SECRETS": program_secrets(files, flower=True),
        "PHOTOFARM_METRICS_SECRETS": program_secrets(files, flower=False, metrics=True),
        # FARM_METRICS_PORT=0: the endpoint is off, and supervisord does not start it
        "PHOTOFARM_METRICS_AUTOSTART": "true" if s.metrics_port else "false",
    })
    return env


def private_state(state: Path) -> None:
    """The state dir and its log dir 0700, logs left by an earlier run 0600."""
    logs = state / "log"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (state, logs):
        folder.chmod(0o700)
    for log in logs.iterdir():
        if log.is_file():
            log.chmod(0o600)


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
        from workers.checks import check_farm
        from workers.commands import metrics
        from workers.commands.flower import check_exposure
        from workers.metrics import clear, metrics_dir

        check_exposure(s)  # refuse now, not in a restart loop under supervisord
        metrics.check_exposure(s)
        check_farm(s)  # APNs apps, CA file, extra imports: what every worker checks at start
        state = Path(env["FARM_STATE_DIR"])
        try:
            private_state(state)
            write_secrets(secret_files(s, state), state)
            clear(metrics_dir(state))  # files of the last run's processes: counters start over
        except OSError as exc:
            raise SettingsError(f"FARM_STATE_DIR: cannot prepare {state}: "
                                f"{exc.strerror or exc}") from None
        # supervisord applies its own umask= only when it daemonizes; under -n it keeps ours,
        # and the log files it opens for its programs, and the programs, inherit it.
        os.umask(UMASK)
        argv = [program, "-n", "-c", str(CONF), *(rest[1:] if rest[:1] == ["--"] else rest)]
    sys.stdout.flush()
    os.execve(program, argv, {**without_secrets(dict(os.environ)), **env})
