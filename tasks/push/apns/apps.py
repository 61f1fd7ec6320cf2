"""The apps we push for: bundle id (the apns-topic), signing key, team and endpoint.

Like pyapns' ``provision(app_id, ...)``: an app is registered once per process, either in code or
from ``FARM_APNS_APPS``. The .p8 key stays in its file and is read only when a token is signed, so
it is never in the environment, in settings, in a repr or in a log line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.settings import Settings, get_settings

PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"
ENDPOINTS = {"production": PRODUCTION, "sandbox": SANDBOX, "development": SANDBOX}

# Apple's key ids and team ids are 10 upper-case alphanumerics; checking the shape catches the
# commonest mistake, fields given in the wrong order.
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


class AppConfigError(ValueError):
    """An app's configuration is wrong; the message names the app (never the key's contents)."""


@dataclass(frozen=True)
class App:
    app_id: str  # the bundle id, sent as apns-topic
    key_id: str
    team_id: str
    key_path: Path  # the .p8 file; its contents are read only when signing
    environment: str = "production"  # "production", "sandbox" or an https:// URL (a test host)
    ca_file: Path | None = None  # CA bundle for a custom endpoint; None: the system's

    @property
    def endpoint(self) -> str:
        return ENDPOINTS.get(self.environment) or self.environment.rstrip("/")

    def signing_key(self) -> str:
        """The PEM text of the .p8 key; read on demand (once per token, every ~45 min), and
        checked, so a key file replaced by junk fails naming the app, not deep inside PyJWT."""
        try:
            pem = self.key_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise AppConfigError(f"APNs app {self.app_id!r}: cannot read key file "
                                 f"{self.key_path}: "
                                 f"{getattr(exc, 'strerror', None) or 'not PEM text'}") from None
        problem = _key_problem(pem)
        if problem:
            raise AppConfigError(f"APNs app {self.app_id!r}: key file {self.key_path} {problem}")
        return pem


_apps: dict[str, App] = {}
_loaded_settings = False


def provision(app_id: str, *, key_id: str, team_id: str, key_path: str | Path,
              environment: str = "production", ca_file: str | Path | None = None) -> App:
    """Register (or replace) an app in this process and return it."""
    app = _checked(App(app_id, key_id, team_id, Path(key_path), environment,
                       Path(ca_file) if ca_file else None))
    _apps[app_id] = app
    return app


def unprovision(app_id: str) -> None:
    _apps.pop(app_id, None)


def get_app(app_id: str) -> App:
    """A provisioned app; apps from settings are loaded on first use."""
    _load_from_settings()
    try:
        return _apps[app_id]
    except KeyError:
        raise AppConfigError(f"APNs app {app_id!r} is not provisioned "
                             "(provision() it or list it in FARM_APNS_APPS)") from None


def reset() -> None:
    """Forget every app (tests; settings are read again on next use)."""
    global _loaded_settings
    _apps.clear()
    _loaded_settings = False


def all_apps() -> list[App]:
    _load_from_settings()
    return list(_apps.values())


def _load_from_settings() -> None:
    global _loaded_settings
    if _loaded_settings:
        return
    s = get_settings()
    for app in parse_apps(s.apns_apps, s.apns_ca_file or None):
        _apps.setdefault(app.app_id, app)  # an explicit provision() wins
    _loaded_settings = True


def parse_apps(spec: str, ca_file: str | Path | None = None) -> list[App]:
    """FARM_APNS_APPS: compact entries or the path of a JSON file.

    Compact: ``bundle_id|key_id|team_id|key_path[|environment]``, entries separated by commas or
    newlines ('|' because URLs and paths contain ':'). JSON: a list of objects with the keys
    app_id, key_id, team_id, key_path and optionally environment.
    ``ca_file`` (FARM_APNS_CA_FILE) applies to apps whose environment is a custom URL.
    """
    spec = spec.strip()
    if not spec:
        return []
    if "PRIVATE KEY" in spec:  # never echo it back in an error
        raise AppConfigError("FARM_APNS_APPS holds key material: put each key in a file and "
                             "give its path")
    if "|" not in spec:
        path = Path(spec)
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AppConfigError(f"FARM_APNS_APPS: cannot read JSON app list {path}: "
                                 f"{exc}") from None
        if not isinstance(entries, list):
            raise AppConfigError(f"FARM_APNS_APPS: {path} must hold a JSON list of apps")
        return [_from_mapping(e, ca_file) for e in entries]
    apps = []
    for entry in filter(None, (e.strip() for e in re.split(r"[,\n]", spec))):
        parts = [p.strip() for p in entry.split("|")]
        if len(parts) not in (4, 5):
            raise AppConfigError(f"FARM_APNS_APPS: {parts[0][:100]!r} has {len(parts)} fields, "
                                 "needs bundle_id|key_id|team_id|key_path[|environment]")
        apps.append(_from_mapping(dict(zip(
            ("app_id", "key_id", "team_id", "key_path", "environment"), parts, strict=False)),
            ca_file))
    return apps


def _from_mapping(entry: Any, ca_file: str | Path | None) -> App:
    try:
        env = str(entry.get("environment") or "production")
        app = App(str(entry["app_id"]), str(entry["key_id"]), str(entry["team_id"]),
                  Path(entry["key_path"]), env,
                  Path(ca_file) if ca_file and env not in ENDPOINTS else None)
    except (KeyError, TypeError, AttributeError):
        raise AppConfigError("FARM_APNS_APPS: each app needs app_id, key_id, team_id and "
                             f"key_path, got {entry!r}") from None
    try:
        return _checked(app)
    except AppConfigError as exc:
        raise AppConfigError(f"FARM_APNS_APPS: {exc}") from None


def _checked(app: App) -> App:
    def bad(problem: str) -> AppConfigError:
        return AppConfigError(f"APNs app {app.app_id!r}: {problem}")

    if not _BUNDLE_ID.fullmatch(app.app_id):
        raise bad("the app id must be a bundle id such as com.example.photos")
    for name in ("key_id", "team_id"):
        if not _APPLE_ID.fullmatch(getattr(app, name)):
            raise bad(f"{name} must be 10 upper-case letters or digits, "
                      f"got {getattr(app, name)!r}")
    if not app.key_path.is_file():
        raise bad(f"key file {app.key_path} does not exist")
    if app.environment not in ENDPOINTS:
        url = urlsplit(app.environment)
        try:
            url.port  # noqa: B018  (parsed lazily: a bad port raises only when read)
        except ValueError:
            raise bad(f"environment URL has a bad port, got {app.environment!r}") from None
        if url.scheme != "https" or not url.hostname:
            raise bad("environment must be production, sandbox or an https:// URL, "
                      f"got {app.environment!r}")
    if app.ca_file is not None and not app.ca_file.is_file():
        raise bad(f"CA file {app.ca_file} does not exist")
    return app


def _key_problem(pem: str) -> str | None:
    """Why ``pem`` cannot sign APNs tokens (ES256 needs an EC P-256 private key), or None.
    The key's contents never appear in the answer."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        return "is encrypted; APNs .p8 keys are not"
    except (ValueError, UnsupportedAlgorithm):
        return "is not a PEM private key (an APNs .p8 file)"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
        return f"is not an EC P-256 key (it holds a {kind} key)"
    if key.curve.name != "secp256r1":
        return f"holds an EC key on {key.curve.name}, not P-256 (secp256r1)"
    return None


def check_apps(s: Settings | None = None) -> list[App]:
    """Every app FARM_APNS_APPS lists, with its key file loaded and FARM_APNS_CA_FILE read, so a
    wrong entry stops a worker at start (one line naming the app and the file) instead of
    dead-lettering its first push. Raises AppConfigError."""
    s = s or get_settings()
    ca_file = s.apns_ca_file
    if ca_file:
        import ssl

        if not Path(ca_file).is_file():
            raise AppConfigError(f"FARM_APNS_CA_FILE: {ca_file} does not exist")
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, OSError, UnicodeDecodeError):
            raise AppConfigError(f"FARM_APNS_CA_FILE: {ca_file} is not a PEM CA bundle") from None
    found = parse_apps(s.apns_apps, ca_file or None)
    for app in found:
        try:
            app.signing_key()
        except AppConfigError as exc:
            raise AppConfigError(f"FARM_APNS_APPS: {exc}") from None
    return found
