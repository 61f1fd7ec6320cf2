"""Start-up checks that need more than the settings themselves: files and keys they name.

config/ checks every value's shape when settings load; what must be read from disk, with a
library, is checked here as a process starts, so a wrong APNs key stops the worker (and
`farm supervise`) with one line naming the app and the file, instead of letting it report ready
and dead-letter its first push.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from config.queues import Q
from config.settings import Settings, SettingsError


def check_push(s: Settings) -> None:
    """FARM_APNS_APPS (fields, each key file an EC P-256 private key) and FARM_APNS_CA_FILE."""
    if not (s.apns_apps or s.apns_ca_file):
        return  # no push configured: pushes dead-letter "not provisioned", by design
    from tasks.push.apns.apps import AppConfigError, check_apps

    try:
        check_apps(s)
    except AppConfigError as exc:
        raise SettingsError(str(exc)) from None


def check_extra_imports(s: Settings) -> None:
    """FARM_EXTRA_IMPORTS names modules that exist (Celery imports them as the worker starts,
    where a typo is a 30-line traceback)."""
    for name in s.extra_imports:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package, or an empty segment
            found = False
        if not found:
            raise SettingsError(f"FARM_EXTRA_IMPORTS: no module named {name!r}")


def check_worker(s: Settings, queues: Iterable[str]) -> None:
    """What a worker serving ``queues`` needs; only push workers need the APNs keys (a host
    without them may still resize or fan out)."""
    check_extra_imports(s)
    if Q.PUSH in set(queues):
        check_push(s)


def check_farm(s: Settings) -> None:
    """Everything the whole farm needs (`farm supervise` runs every profile)."""
    check_extra_imports(s)
    check_push(s)
