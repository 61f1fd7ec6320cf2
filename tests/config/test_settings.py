"""Configuration: typed, validated at start, errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings, SettingsError, as_environ, load_settings

NO_DOTENV = Path("/nonexistent/.env")


def load(**env: str) -> Settings:
    return load_settings(env, dotenv=NO_DOTENV)


def test_defaults_run_on_one_machine() -> None:
    s = load()
    assert s.broker_url.startswith("redis://127.0.0.1")
    assert s.visibility_timeout > s.task_time_limit + s.retry_max_delay
    assert s.cpu_workers >= 1


def test_values_are_typed() -> None:
    s = load(FARM_TASK_TIME_LIMIT="60", FARM_TASK_SOFT_TIME_LIMIT="50",
             FARM_RETRY_BASE_DELAY="0.5", FARM_STRICT_ARGS="yes",
             FARM_EXTRA_IMPORTS="a.b, c.d", FARM_VISIBILITY_TIMEOUT="2000")
    assert (s.task_time_limit, s.retry_base_delay, s.strict_args) == (60, 0.5, True)
    assert s.extra_imports == ("a.b", "c.d")


@pytest.mark.parametrize(("env", "message"), [
    ({"FARM_TASK_TIME_LIMIT": "ten"}, "FARM_TASK_TIME_LIMIT: must be an integer, got 'ten'"),
    ({"FARM_STRICT_ARGS": "maybe"}, "FARM_STRICT_ARGS: must be true or false"),
    ({"FARM_BROKER_URL": "amqp://x"}, "FARM_BROKER_URL: must be a redis://"),
    ({"FARM_STORAGE_URL": "ftp://x"}, "FARM_STORAGE_URL: must be s3://"),
    ({"FARM_IO_PROCS": "0"}, "FARM_IO_PROCS: must be positive"),
    ({"FARM_LOG_LEVEL": "LOUD"}, "FARM_LOG_LEVEL: must be DEBUG"),
    ({"FARM_VISIBILITY_TIMEOUT": "600"}, "FARM_VISIBILITY_TIMEOUT: must exceed"),
    ({"FARM_TASK_SOFT_TIME_LIMIT": "400"}, "FARM_TASK_SOFT_TIME_LIMIT: must be below"),
    ({"FARM_BROKR_URL": "redis://x"}, "FARM_BROKR_URL: unknown setting"),
    ({"FARM_MARKER_TTL": "604800"}, "FARM_MARKER_TTL: must exceed FARM_DEADLETTER_RETENTION_DAYS"),
    ({"FARM_APNS_MIN_RESIGN_AGE": "3600"}, "FARM_APNS_MIN_RESIGN_AGE: must be between 0 and 1200"),
    ({"FARM_FLOWER_PASSWORD_FILE": "/nonexistent/pw"}, "FARM_FLOWER_PASSWORD_FILE: cannot read"),
])
def test_wrong_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(**env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nFARM_KEY_PREFIX=dot\nexport FARM_LOG_LEVEL='DEBUG'\n")
    s = load_settings({"FARM_KEY_PREFIX": "env"}, dotenv=dotenv)
    assert (s.key_prefix, s.log_level) == ("env", "DEBUG")


def test_secret_from_file_and_never_in_repr_or_child_env(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    s = load(FARM_FLOWER_PASSWORD_FILE=str(secret))
    assert s.flower_password == "s3cret-value"
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(as_environ(s))


def test_bad_config_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FARM_ENV_FILE": "/dev/null", "FARM_IO_THREADS": "lots"}
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--profile", "io"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "farm: configuration error: FARM_IO_THREADS: must be an integer, got 'lots'")


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for name in as_environ(load()):
        assert f"{name}=" in example, f"{name} missing from .env.example"
    assert "FARM_FLOWER_PASSWORD=" in example


def test_file_variants_exist_only_for_secrets() -> None:
    assert load(FARM_APNS_CA_FILE="/etc/ca.pem").apns_ca_file == "/etc/ca.pem"
    with pytest.raises(SettingsError, match="FARM_KEY_PREFIX_FILE: unknown setting"):
        load(FARM_KEY_PREFIX_FILE="/x")
