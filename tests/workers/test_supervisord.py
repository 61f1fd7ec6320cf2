"""supervisord.conf runs the whole farm: checked as text, then started for real, scaled down."""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from config.queues import QUEUES
from config.settings import SettingsError, load_settings, replace
from tests.support.http import http_get
from tests.support.workers import wait_for
from workers.commands.flower import basic_auth, check_exposure, flower_password
from workers.commands.supervise import CONF, supervise_environ, without_secrets
from workers.embedded_redis import EmbeddedRedis, free_port
from workers.profiles import PROFILES

FARM = Path(sys.executable).parent / "farm"
SUPERVISORCTL = Path(sys.executable).parent / "supervisorctl"
BASE_ENV = {"FARM_ENV_FILE": os.devnull}
SLEEP = 6  # seconds a task runs across the stop: flower and beat stop first, then the workers


def programs() -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()  # raw: the %(ENV_...)s stay as written
    parser.read(CONF)
    return {s.removeprefix("program:"): dict(parser[s]) for s in parser.sections()
            if s.startswith("program:")}


def test_one_program_per_profile_stopped_as_a_group() -> None:
    progs = programs()
    for name, profile in PROFILES.items():
        running = [p for p, opts in progs.items()
                   if f" worker --profile {name} " in opts["command"] + " "]
        assert running == [name], f"profile {name} must have exactly one program"
        opts = progs[name]
        assert opts["stopsignal"] == "TERM"  # Celery's warm shutdown
        assert opts["killasgroup"] == "true"
        # TERM to a prefork group would kill the pool children mid-task (Celery resets their
        # SIGTERM), so only the parent gets TERM there; a threads worker is one process.
        assert opts["stopasgroup"] == ("false" if profile.pool == "prefork" else "true")
        assert opts["stopwaitsecs"] == "%(ENV_PHOTOFARM_STOPWAITSECS)s"
        assert "%(ENV_FARM_STATE_DIR)s/log/" in opts["stdout_logfile"]
    io = progs["io"]
    assert io["numprocs"] == "%(ENV_FARM_IO_PROCS)s"
    assert "%(process_num)02d" in io["process_name"] and "--node io-%(process_num)02d" in io[
        "command"]
    beats = [p for p, opts in progs.items() if opts["command"].split()[1:] == ["beat"]]
    assert beats == ["beat"] and progs["beat"].get("numprocs", "1") == "1"
    assert progs["flower"]["command"].split()[1:] == ["flower"]  # no secrets on a command line
    for opts in progs.values():
        assert opts["stopasgroup"] in ("true", "false") and opts["killasgroup"] == "true"
        assert opts["autorestart"] == "true"


def test_every_expansion_is_exported(tmp_path: Path) -> None:
    s = load_settings({**BASE_ENV, "FARM_CPU_CONCURRENCY": "0", "FARM_TASK_TIME_LIMIT": "120",
                       "FARM_TASK_SOFT_TIME_LIMIT": "100"})
    env = supervise_environ(s, tmp_path)
    used = set(re.findall(r"%\(ENV_(\w+)\)s", CONF.read_text()))
    assert used <= env.keys(), f"not exported: {sorted(used - env.keys())}"
    assert int(env["PHOTOFARM_STOPWAITSECS"]) > s.task_time_limit
    assert int(env["PHOTOFARM_CPU_CONCURRENCY"]) == (os.cpu_count() or 1)
    assert env["FARM_STATE_DIR"] == str(tmp_path / "var")
    assert not any("PASSWORD" in k for k in env)


def test_secrets_reach_programs_as_file_paths_only(tmp_path: Path) -> None:
    s = load_settings({**BASE_ENV, "FARM_S3_SECRET_ACCESS_KEY": "s3-value",
                       "FARM_FLOWER_PASSWORD": "flower-value"})
    env = supervise_environ(s, tmp_path)
    secrets_dir = tmp_path / "var" / "secrets"
    assert env["PHOTOFARM_WORKER_SECRETS"] == (
        f'FARM_S3_SECRET_ACCESS_KEY_FILE="{secrets_dir / "s3_secret_access_key"}"')
    assert env["PHOTOFARM_FLOWER_SECRETS"] == (
        f'FARM_FLOWER_PASSWORD_FILE="{secrets_dir / "flower_password"}"')
    assert not any("value" in v for v in env.values())
    # supervisord's own environment, inherited by every program: no secret, no stray .env.
    inherited = without_secrets({"FARM_S3_SECRET_ACCESS_KEY": "x", "FARM_TOKEN_KEYS_FILE": "/k",
                                 "FARM_IO_PROCS": "2", "PATH": "/bin"})
    assert inherited == {"FARM_IO_PROCS": "2", "PATH": "/bin", "FARM_ENV_FILE": os.devnull}
    # Nothing set: empty environment= values, which supervisord accepts.
    plain = supervise_environ(load_settings(BASE_ENV), tmp_path)
    assert plain["PHOTOFARM_WORKER_SECRETS"] == plain["PHOTOFARM_FLOWER_SECRETS"] == ""


def test_defaults_add_up_to_about_200_task_processes() -> None:
    s = load_settings(BASE_ENV)
    per_core = s.cpu_workers
    total = per_core + s.feed_concurrency + s.io_procs + s.batch_concurrency
    assert total == per_core + 192


def test_flower_stays_on_loopback_without_a_chosen_password() -> None:
    s = load_settings(BASE_ENV)
    check_exposure(s)  # 127.0.0.1, generated password: fine
    for address in ("0.0.0.0", "", "10.1.2.3", "flower.example.com"):
        with pytest.raises(SettingsError, match="FARM_FLOWER_ADDRESS"):
            check_exposure(replace(s, flower_address=address))
    check_exposure(replace(s, flower_address="0.0.0.0", flower_password="chosen"))
    check_exposure(replace(s, flower_address="::1"))


def test_generated_flower_password_is_private_and_kept(tmp_path: Path) -> None:
    s = replace(load_settings(BASE_ENV), state_dir=tmp_path / "state")
    password, path = flower_password(s)
    assert path is not None and path.parent == tmp_path / "state"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(password) >= 24 and path.read_text().strip() == password
    assert flower_password(s) == (password, path)  # a restart keeps it
    assert flower_password(replace(s, flower_password="set")) == ("set", None)


def test_flower_credentials_survive_flowers_env_parsing() -> None:
    assert basic_auth("farm", "p:w=x") == "farm:p:w=x"
    with pytest.raises(SettingsError, match="FARM_FLOWER_PASSWORD"):
        basic_auth("farm", "a,b")  # FLOWER_BASIC_AUTH is a comma-separated list
    with pytest.raises(SettingsError, match="FARM_FLOWER_USER"):
        basic_auth("far:m", "pw")


def test_supervise_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FARM_IO_PROCS": "lots", "FARM_STATE_DIR": str(tmp_path)}
    out = subprocess.run([FARM, "supervise"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "farm: configuration error: FARM_IO_PROCS: must be an integer, got 'lots'"]
    assert not (tmp_path / "supervisord.pid").exists()


# --- the farm itself ------------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every live process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text.rsplit(")", 1)[1].split()[:2]
        table[int(stat.parent.name)] = (int(ppid), state)
    return table


def _descendants(root: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    entry = _proc_table().get(pid)
    return entry is not None and entry[1] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def _ctl(env: dict[str, str], cwd: Path, *args: str) -> str:
    return subprocess.run([FARM, "supervise", "ctl", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30).stdout


def _status(env: dict[str, str], cwd: Path) -> dict[str, str]:
    lines = _ctl(env, cwd, "status").splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if len(line.split()) > 1}



def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net shows them) listening on a TCP port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


@pytest.mark.integration
def test_farm_runs_under_supervisord_and_stops_cleanly(
        data: redis.Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    from config.celery_app import app
    from workers.commands.ping import ping_queues

    password = "pw-" + secrets.token_hex(16)
    s3_secret = "s3-" + secrets.token_hex(16)
    port = free_port()
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # an operator's existing, too open state dir is tightened
    env = {**os.environ, "FARM_STATE_DIR": str(state), "FARM_CPU_CONCURRENCY": "1",
           "FARM_FEED_CONCURRENCY": "1", "FARM_IO_PROCS": "2", "FARM_IO_THREADS": "2",
           "FARM_BATCH_CONCURRENCY": "1", "FARM_FLOWER_PORT": str(port),
           "FARM_FLOWER_PASSWORD": password, "FARM_S3_SECRET_ACCESS_KEY": s3_secret,
           "FARM_METRICS_PORT": str(free_port())}
    expected = {"workers:cpu", "workers:feed", "workers:io-00", "workers:io-01",
                "workers:batch", "beat", "flower", "metrics"}
    out = tmp_path / "supervise.out"
    with open(out, "wb") as log:
        sup = subprocess.Popen([FARM, "supervise"], env=env, cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    started: set[int] = set()
    try:
        wait_for(lambda: sup.poll() is None and _status(env, tmp_path) == dict.fromkeys(
            expected, "RUNNING"), timeout=40, interval=0.5, what="every program RUNNING")
        started = _descendants(sup.pid)

        # Every queue has a worker: a task round-trips through each one.
        latencies = ping_queues(list(QUEUES), timeout=30)
        assert None not in latencies.values(), latencies
        # One node name per worker process, so the io processes do not collide.
        nodes = {name.split("@")[0] for reply in app.control.ping(timeout=2) for name in reply}
        assert nodes == {"cpu", "feed", "io-00", "io-01", "batch"}

        # Exactly one beat.
        beats = [p for p in started if _cmdline(p)[2:] == ["beat"]]
        assert len(beats) == 1, [_cmdline(p) for p in beats]

        # Flower: basic auth, bound to loopback only.
        base, auth = f"http://127.0.0.1:{port}", f"farm:{password}"
        assert http_get(base + "/")[0] == 401
        assert http_get(base + "/", "farm:wrong")[0] == 401
        assert http_get(base + "/", auth)[0] == 200
        assert _listen_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        # Its Prometheus metrics too (Flower 2.x leaves /metrics open).
        assert http_get(base + "/metrics")[0] == 401
        assert http_get(base + "/metrics", auth)[0] == 200

        # This node's Prometheus endpoint: every worker's pings, summed from their files.
        status, body = http_get(f"http://127.0.0.1:{env['FARM_METRICS_PORT']}/metrics")
        assert status == 200 and b'farm_task_started_total{task="diag.ping"}' in body

        # Secrets only where used: no process holds a secret's value in its environment; the
        # workers get the S3 secret's file, Flower its password's, beat and supervisord neither.
        environs = {p: _environ(p) for p in [sup.pid, *started]}
        assert [p for p, e in environs.items()
                if any(s3_secret in v or password in v for v in e.values())] == []
        workers = [p for p in started if _cmdline(p)[2:3] == ["worker"]]
        others = [sup.pid, *(p for p in started if _cmdline(p)[2:] in (["beat"], ["flower"]))]
        assert len(workers) >= 5 and len(others) == 3
        for pid in workers:
            worker_settings = load_settings(environs[pid])  # what the worker itself loads
            assert worker_settings.s3_secret_access_key == s3_secret
            assert "FARM_FLOWER_PASSWORD_FILE" not in environs[pid]
        flower_pid = next(p for p in started if _cmdline(p)[2:] == ["flower"])
        assert "FARM_FLOWER_PASSWORD_FILE" in environs[flower_pid]
        for pid in others:
            assert not [k for k in environs[pid] if k.startswith("FARM_S3_SECRET")], pid
        secret_file = Path(environs[workers[0]]["FARM_S3_SECRET_ACCESS_KEY_FILE"])
        assert secret_file.parent == state / "secrets"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert secret_file.parent.stat().st_mode & 0o777 == 0o700

        # Private state: the dir 0700, every log 0600.
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / "log").stat().st_mode & 0o777 == 0o700
        logfiles = list((state / "log").iterdir())
        assert len(logfiles) >= len(expected) + 1  # each program's and supervisord's
        assert {p.name: p.stat().st_mode & 0o777 for p in logfiles} == dict.fromkeys(
            (p.name for p in logfiles), 0o600)

        # The password is on no command line (nor, checked after the stop, in any log).
        secret = password.encode()
        leaking = [p for p in map(int, (d.name for d in Path("/proc").glob("[0-9]*")))
                   if secret in "\0".join(_cmdline(p)).encode()]
        assert leaking == []

        # `supervisorctl -c supervisord.conf` works with just the absolute FARM_STATE_DIR.
        ctl = subprocess.run([SUPERVISORCTL, "-c", CONF, "pid", "all"], capture_output=True,
                             text=True, timeout=30, cwd=tmp_path,
                             env={"PATH": os.environ["PATH"], "FARM_STATE_DIR": str(state)})
        pids = {int(p) for p in ctl.stdout.split()}
        assert len(pids) == len(expected) and pids <= started

        # Warm shutdown: tasks already running on a prefork and a threads worker finish.
        sleeps = {q: app.send_task("diag.sleep", args=[SLEEP, f"warm-{q}"], queue=q).id
                  for q in ("maintenance", "push")}

        def started_in_flower() -> bool:
            states = [http_get(f"{base}/api/task/info/{tid}", auth) for tid in sleeps.values()]
            return all(code == 200 and json.loads(body)["state"] == "STARTED"
                       for code, body in states)

        wait_for(started_in_flower, timeout=15, interval=0.1, what="sleeps started")

        t0 = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=45) == 0
        stop_seconds = time.monotonic() - t0
        assert [p for p in started if _alive(p)] == []
        for q in sleeps:
            assert len(data.lrange(f"farm:diag:warm-{q}", 0, -1)) == 1, f"{q} task was cut off"
        assert stop_seconds < 45
        assert stop_seconds > SLEEP / 2  # the workers did wait for their running tasks
        assert not (state / "supervisord.pid").exists()
        # The secrets' own 0600 files aside, no file holds a secret or the broker's password.
        logs = [out, *(p for p in state.rglob("*") if p.is_file()
                       and p.parent != state / "secrets")]
        assert len(logs) > len(expected)
        for value in (secret, s3_secret.encode(), redis_server.password.encode()):
            assert [p for p in logs if value in p.read_bytes()] == []
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        for pid in started:  # only after a failure; checked, as the pids may be reused
            if _alive(pid) and str(FARM) in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_sentinel_password_reaches_every_program_that_reaches_the_broker(
        tmp_path: Path) -> None:
    s = load_settings({**BASE_ENV, "FARM_SENTINELS": "10.0.0.1:26379,10.0.0.2:26379",
                       "FARM_SENTINEL_PASSWORD": "sentinel-value",
                       "FARM_BROKER_URL": "redis://:b@/0", "FARM_BROKER_MASTER": "farm-broker",
                       "FARM_FLOWER_PASSWORD": "flower-value"})
    env = supervise_environ(s, tmp_path)
    shared = f'FARM_SENTINEL_PASSWORD_FILE="{tmp_path / "var" / "secrets" / "sentinel_password"}"'
    for program in ("WORKER", "FLOWER", "METRICS"):
        assert shared in env[f"PHOTOFARM_{program}_SECRETS"].split(","), program
    assert "FLOWER_PASSWORD" not in env["PHOTOFARM_WORKER_SECRETS"]
    assert not any("value" in v for v in env.values())
