"""`farm flower`: the Flower dashboard, behind basic auth, on loopback unless told otherwise.

The password reaches Flower through its environment (FLOWER_BASIC_AUTH, read by flower 2.2's
apply_env_options), never through argv, which any user can read with `ps`. It is never printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings, SettingsError, get_settings

PASSWORD_FILE = "flower-password"  # under FARM_STATE_DIR, when no password is configured


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("flower", help="run the Flower dashboard (basic auth, loopback)",
                       description="Binds FARM_FLOWER_ADDRESS:FARM_FLOWER_PORT with basic auth "
                                   "FARM_FLOWER_USER / FARM_FLOWER_PASSWORD (or "
                                   "FARM_FLOWER_PASSWORD_FILE).")
    p.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def check_exposure(s: Settings) -> None:
    """A dashboard that can revoke tasks leaves loopback only behind a password someone chose."""
    if not is_loopback(s.flower_address) and not s.flower_password:
        raise SettingsError(f"FARM_FLOWER_ADDRESS: {s.flower_address!r} is not a loopback "
                            "address; set FARM_FLOWER_PASSWORD or FARM_FLOWER_PASSWORD_FILE first")


def flower_password(s: Settings) -> tuple[str, Path | None]:
    """The configured password, or one generated once and kept in a 0600 file (and its path)."""
    if s.flower_password:
        return s.flower_password, None
    path = (s.state_dir / PASSWORD_FILE).resolve()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_file():
        os.chmod(path, 0o600)
        kept = path.read_text().strip()
        if kept:  # reused, so a restart does not lock the operator out
            return kept, path
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password, path


def basic_auth(user: str, password: str) -> str:
    # Flower splits FLOWER_BASIC_AUTH on commas (a list of user:password pairs).
    if "," in password:
        raise SettingsError("FARM_FLOWER_PASSWORD: must not contain ',' "
                            "(Flower reads a comma-separated list)")
    if not user or "," in user or ":" in user:
        raise SettingsError("FARM_FLOWER_USER: must be non-empty, without ',' or ':'")
    return f"{user}:{password}"


def guard_metrics() -> None:
    """Put Flower's /metrics behind the same basic auth as every other page. Flower 2.x's
    Metrics handler has no auth check (its pages and API do), so anyone who can reach the port
    would read the task names, worker names and counts it exports. Patched in this process only,
    before Flower builds its routes; `authenticated` runs the basic-auth check (401) first."""
    import tornado.web
    from flower.views.monitor import Metrics  # type: ignore[import-untyped]

    if not getattr(Metrics.get, "farm_guarded", False):
        guarded = tornado.web.authenticated(Metrics.get)
        guarded.farm_guarded = True  # type: ignore[attr-defined]
        Metrics.get = guarded


def run(args: argparse.Namespace) -> int:
    s = get_settings()
    check_exposure(s)
    password, generated = flower_password(s)
    os.environ["FLOWER_BASIC_AUTH"] = basic_auth(s.flower_user, password)
    if generated:
        print(f"farm flower: no FARM_FLOWER_PASSWORD set; user {s.flower_user!r}, password in "
              f"{generated}", file=sys.stderr, flush=True)
    guard_metrics()
    from config.celery_app import app

    # celery-types declares start NoReturn; it returns the command's exit code, or None.
    start: Callable[[list[str]], int | None] = app.start
    # --conf=/dev/null: a stray flowerconfig.py in the working directory must not override
    # the auth or the address set here.
    return start(["flower", f"--address={s.flower_address}", f"--port={s.flower_port}",
                  f"--conf={os.devnull}"]) or 0
