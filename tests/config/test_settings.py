"""Configuration: typed, validated at start, errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings, SettingsError, as_environ, load_settings, redact_url

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
    ({"FARM_BROKER_URL": "sqs://x"}, "FARM_BROKER_URL: must be a redis://"),
    ({"FARM_BROKER_URL": "amqp://u:p@rabbit:none/farm"}, "FARM_BROKER_URL: the port must be"),
    ({"FARM_BROKER_URL": "amqps://u:p@:5671/farm"}, "FARM_BROKER_URL: needs a host"),
    ({"FARM_STORAGE_URL": "ftp://x"}, "FARM_STORAGE_URL: must be s3://"),
    ({"FARM_IO_PROCS": "0"}, "FARM_IO_PROCS: must be positive"),
    ({"FARM_LOG_LEVEL": "LOUD"}, "FARM_LOG_LEVEL: must be DEBUG"),
    ({"FARM_VISIBILITY_TIMEOUT": "600"}, "FARM_VISIBILITY_TIMEOUT: must exceed"),
    ({"FARM_TASK_SOFT_TIME_LIMIT": "400"}, "FARM_TASK_SOFT_TIME_LIMIT: must be below"),
    ({"FARM_BROKR_URL": "redis://x"}, "FARM_BROKR_URL: unknown setting"),
    ({"FARM_MARKER_TTL": "604800"}, "FARM_MARKER_TTL: must exceed FARM_DEADLETTER_RETENTION_DAYS"),
    ({"FARM_APNS_MIN_RESIGN_AGE": "3600"}, "FARM_APNS_MIN_RESIGN_AGE: must be between 0 and 1200"),
    ({"FARM_FLOWER_PASSWORD_FILE": "/nonexistent/pw"}, "FARM_FLOWER_PASSWORD_FILE: cannot read"),
    # every URL's host and port parsed at load time, not by the first library to connect
    ({"FARM_BROKER_URL": "redis://127.0.0.1:notaport/0"}, "FARM_BROKER_URL: the port must be"),
    ({"FARM_BROKER_URL": "redis://127.0.0.1:0/0"}, "FARM_BROKER_URL: the port must be"),
    ({"FARM_BROKER_URL": "unix:///run/redis.sock"}, "FARM_BROKER_URL: must be a redis://"),
    ({"FARM_REDIS_URL": "redis://127.0.0.1:6379/one"}, "FARM_REDIS_URL: the database"),
    ({"FARM_REDIS_URL": "unix://"}, "FARM_REDIS_URL: unix:// needs a socket path"),
    ({"FARM_RESULT_URL": "redis://[::1:6379/0"}, "FARM_RESULT_URL: is not a valid URL"),
    ({"FARM_FEED_SHARDS": "redis://a b:6379/0"}, "FARM_FEED_SHARDS: host 'a b' is not"),
    ({"FARM_S3_ENDPOINT_URL": "minio:9000"}, "FARM_S3_ENDPOINT_URL: must be a http://"),
    ({"FARM_S3_ENDPOINT_URL": "http://:9000"}, "FARM_S3_ENDPOINT_URL: needs a host"),
    ({"FARM_CDN_URL": "https://cdn.example.com:cdn/"}, "FARM_CDN_URL: the port must be"),
    ({"FARM_TWITTER_API_URL": "https://api.x.com:99999"}, "FARM_TWITTER_API_URL: the port"),
    ({"FARM_PHOTO_LINK": "https://exa mple.com/p/{photo_id}"}, "FARM_PHOTO_LINK: host"),
    ({"FARM_FLOWER_ADDRESS": "not an address"}, "FARM_FLOWER_ADDRESS: must be an IP address"),
    ({"FARM_WIRE_LOG": "verbose"}, "FARM_WIRE_LOG: must be true or false"),
    ({"FARM_STORAGE_URL": "s3://my bucket/media"}, "FARM_STORAGE_URL: 'my bucket' is not an S3"),
    ({"FARM_STORAGE_URL": "s3://[bucket/media"}, "FARM_STORAGE_URL: '[bucket' is not an S3"),
])
def test_wrong_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(**env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("url", ["amqp://farm:pw@rabbit.internal:5672/photofarm",
                                 "amqps://farm:pw@10.0.0.5:5671/photofarm", "amqp://rabbit"])
def test_rabbitmq_broker_urls_are_accepted(url: str) -> None:
    assert load(FARM_BROKER_URL=url).broker_url == url


def test_broker_password_is_redacted_in_errors() -> None:
    with pytest.raises(SettingsError) as err:
        load(FARM_BROKER_URL="amqp://farm:hunter2@rabbit:99999/photofarm")
    assert "hunter2" not in str(err.value)
    assert "amqp://***@rabbit:99999/photofarm" in str(err.value)


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


def test_good_urls_and_addresses_load() -> None:
    s = load(FARM_BROKER_URL="rediss://:pw@redis.internal:6380/0",
             FARM_REDIS_URL="unix:///run/redis.sock?db=1", FARM_RESULT_URL="redis://",
             FARM_FEED_SHARDS="redis://[::1]:7000/0,redis://feed_1:7001",
             FARM_S3_ENDPOINT_URL="http://minio:9000", FARM_FLOWER_ADDRESS="::1",
             FARM_CDN_URL="https://cdn.example.com/")
    assert s.feed_shards == ("redis://[::1]:7000/0", "redis://feed_1:7001")
    for address in ("", "0.0.0.0", "localhost", "flower.example.com"):
        assert load(FARM_FLOWER_ADDRESS=address).flower_address == address


def test_a_bad_url_never_echoes_its_password() -> None:
    with pytest.raises(SettingsError) as err:
        load(FARM_REDIS_URL="redis://user:s3cret@127.0.0.1:bad/1")
    assert "s3cret" not in str(err.value)
    assert "'redis://***@127.0.0.1:bad/1'" in str(err.value)
    assert redact_url("redis://:p@ss@h:1/0") == "redis://***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
