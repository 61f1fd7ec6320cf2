"""A wrong setting stops the real `farm` command at start: exit 2, one line naming the setting
(and the app and file, for APNs), no traceback, no secret echoed back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from config.settings import SettingsError, load_settings
from tests.support.apns_standin import make_key
from workers.checks import check_farm, check_worker

APP = "com.photofarm.app"
KEY_ID, TEAM_ID = "ABCDE12345", "TEAM123456"


def farm(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, with the test session's environment plus ``env``. A check that does
    not fire starts a worker against the session's own server; the timeout ends it."""
    return subprocess.run([sys.executable, "-m", "workers.cli", *argv],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def assert_one_line(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    line = out.stderr.strip()
    assert "Traceback" not in out.stderr and "\n" not in line, out.stderr[-2000:]
    for text in expected:
        assert text in line, line
    return line


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def apps(key_path: Path | str, *more: str) -> str:
    return "|".join((APP, KEY_ID, TEAM_ID, str(key_path), *more))


@pytest.mark.parametrize(("env", "expected"), [
    # 65 lines of kombu traceback before
    ({"FARM_BROKER_URL": "redis://127.0.0.1:notaport/0"},
     ("FARM_BROKER_URL: the port must be a number from 1 to 65535", "notaport")),
    ({"FARM_BROKER_URL": "redis://127.0.0.1:99999/0"}, ("FARM_BROKER_URL: the port",)),
    ({"FARM_BROKER_URL": "redis://127.0.0.1:6379/abc"}, ("FARM_BROKER_URL: the database",)),
    ({"FARM_BROKER_URL": "redis://[::1/0"}, ("FARM_BROKER_URL: is not a valid URL",)),
    # kombu has no unix:// transport (KeyError traceback before)
    ({"FARM_BROKER_URL": "unix:///tmp/redis.sock"}, ("FARM_BROKER_URL: must be a redis://",)),
    ({"FARM_REDIS_URL": "redis://no such host:6379/1"},
     ("FARM_REDIS_URL: host 'no such host' is not a host name",)),
    ({"FARM_FEED_SHARDS": "redis://127.0.0.1:1/0,redis://127.0.0.1:x/0"},
     ("FARM_FEED_SHARDS: the port",)),
    ({"FARM_S3_ENDPOINT_URL": "http://127.0.0.1:port"}, ("FARM_S3_ENDPOINT_URL: the port",)),
])
def test_a_bad_url_stops_a_worker_with_one_line(env: dict[str, str],
                                                 expected: tuple[str, ...]) -> None:
    line = assert_one_line(farm("worker", "--profile", "io", **env), *expected)
    assert line.startswith("farm: configuration error: FARM_")


def test_a_password_in_a_bad_url_is_not_echoed() -> None:
    out = farm("worker", "--profile", "io",
               FARM_BROKER_URL="redis://:hunter2-secret@127.0.0.1:notaport/0")
    line = assert_one_line(out, "FARM_BROKER_URL", "redis://***@127.0.0.1:notaport/0")
    assert "hunter2" not in line


def test_a_negative_concurrency_is_one_line() -> None:
    assert_one_line(farm("worker", "--profile", "io", "--concurrency", "-3"),
                    "farm worker: --concurrency must be at least 1, got -3")


def test_a_flower_address_that_is_not_one_is_one_line() -> None:
    assert_one_line(farm("flower", FARM_FLOWER_ADDRESS="not an address",
                         FARM_FLOWER_PASSWORD="chosen"),
                    "FARM_FLOWER_ADDRESS: must be an IP address or host name")


def test_bad_apns_apps_stop_an_io_worker_naming_the_app_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "AuthKey_missing.p8"
    junk = tmp_path / "junk.p8"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    rsa_key = tmp_path / "rsa.p8"
    rsa_key.write_bytes(pem(rsa.generate_private_key(65537, 2048)))
    p384 = tmp_path / "p384.p8"
    p384.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    cases = [
        (apps(missing), (APP, str(missing), "does not exist")),
        ("|".join((APP, KEY_ID, str(junk))), (APP, "has 3 fields", "key_path")),
        (apps(junk), (APP, str(junk), "is not a PEM private key")),
        (apps(rsa_key), (APP, str(rsa_key), "not an EC P-256 key", "RSA")),
        (apps(p384), (APP, str(p384), "secp384r1")),
        (apps(p384, "https://127.0.0.1:port"), (APP, "environment URL has a bad port")),
    ]
    for value, expected in cases:
        line = assert_one_line(farm("worker", "--profile", "io", FARM_APNS_APPS=value),
                               "farm: configuration error: FARM_APNS_APPS:", *expected)
        assert "AAAA" not in line  # never the key's contents


def test_a_missing_or_junk_apns_ca_file_stops_an_io_worker(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, KEY_ID, TEAM_ID, APP)
    assert_one_line(farm("worker", "--profile", "io", FARM_APNS_APPS=apps(key.p8_path),
                         FARM_APNS_CA_FILE=str(tmp_path / "ca.pem")),
                    "FARM_APNS_CA_FILE:", str(tmp_path / "ca.pem"), "does not exist")
    junk = tmp_path / "junk-ca.pem"
    junk.write_text("not a certificate\n")
    assert_one_line(farm("worker", "--profile", "io", FARM_APNS_CA_FILE=str(junk)),
                    "FARM_APNS_CA_FILE:", str(junk), "is not a PEM CA bundle")


def test_the_checks_pass_good_apps_and_skip_workers_without_push(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, KEY_ID, TEAM_ID, APP)
    good = load_settings({"FARM_APNS_APPS": apps(key.p8_path, "sandbox")},
                         dotenv=Path(os.devnull))
    check_worker(good, ["push", "social"])
    check_farm(good)
    check_worker(load_settings({}, dotenv=Path(os.devnull)), ["push"])  # push not configured
    bad = load_settings({"FARM_APNS_APPS": apps(tmp_path / "gone.p8")}, dotenv=Path(os.devnull))
    check_worker(bad, ["photos"])  # a resizing host needs no APNs key
    for check in (lambda: check_worker(bad, ["push"]), lambda: check_farm(bad)):
        with pytest.raises(SettingsError, match=r"FARM_APNS_APPS: .*gone\.p8 does not exist"):
            check()


def test_a_key_file_turned_junk_after_start_fails_naming_the_app(tmp_path: Path) -> None:
    from tasks.push.apns.apps import App, AppConfigError

    key, _ = make_key(tmp_path, KEY_ID, TEAM_ID, APP)
    app = App(APP, KEY_ID, TEAM_ID, key.p8_path)
    assert "PRIVATE KEY" in app.signing_key()
    key.p8_path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AppConfigError) as caught:
        app.signing_key()  # what token signing calls: its dead letter names app and file
    assert str(caught.value) == (f"APNs app {APP!r}: key file {key.p8_path} is not a PEM "
                                 "private key (an APNs .p8 file)")


def test_a_missing_extra_import_or_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    assert_one_line(farm("worker", "--profile", "feed",
                         FARM_EXTRA_IMPORTS="tasks.feeds.tasks,no_such.module"),
                    "FARM_EXTRA_IMPORTS: no module named 'no_such.module'")
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_one_line(farm("beat", FARM_STATE_DIR=str(a_file / "state")),
                    "FARM_STATE_DIR: cannot create", "Not a directory")
