"""Errors reported to Sentry when FARM_SENTRY_DSN is set, with nothing secret in them.
Long because set-up, tags, scrubbing and de-duplication must agree on what an event may carry.

``init`` is called by `farm worker` and `farm beat` before Celery starts. sentry-sdk's Celery
integration hooks Celery itself (the tracer each task runs under, the pool's work loop, which it
flushes before a prefork child exits), so it is set up once in the parent; each prefork child
then starts its own client on ``worker_process_init``: a fresh send queue and sender thread, since
a thread does not survive fork and a lock it held at that instant would stay held in the child.

What is reported: a task's final failure (a bug, a permanent error, retries exhausted: what is
also dead-lettered), once; ERROR log lines: a pool process that died (OOM, segfault, kill: never
routine, even when its message then runs fine elsewhere), a message dead-lettered because its
process died under every delivery, a worker's or beat's own trouble. What is not: a transient
error that is retried (Celery's Retry is control flow to the integration): at the farm's scale
a blip at a network partner would be thousands of events, of which only those that fail for good
need a person; nor a second report of what one event already holds (``before_send``).

What is sent, per task event: the task, its queue and attempt, and its id arguments (photo_id,
owner_id, ...) as tags; never the other arguments (captions, tokens), local variables, the
settings' secrets, secret-looking environment values, or passwords in URLs (scrubbed below).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from config.queues import queue_of
from config.settings import Settings, SettingsError

if TYPE_CHECKING:
    from sentry_sdk._types import Breadcrumb, BreadcrumbHint, Event, Hint

log = logging.getLogger("farm.worker")

FILTERED = "[Filtered]"
# Sentry's own scrubber replaces the values of keys with these names wherever it looks (request
# headers, extra, breadcrumb data, frame variables), on top of its default list (password,
# secret, token, auth, authorization, api_key, session, cookie...). "body" and "caption" are the
# farm's message bodies; the http.* keys are the query strings of outgoing requests' breadcrumbs.
DENYLIST = ("dsn", "key", "keys", "token_keys", "access_key", "secret_access_key",
            "aws_secret_access_key", "consumer_secret", "access_token", "refresh_token",
            "device_token", "jwt", "signature", "caption", "body", "payload", "alert",
            "http.query", "http.fragment")
# Values shorter than these are left alone: replacing "ab" everywhere would garble every event
# and protects nothing (a secret that short is no secret).
MIN_SECRET_CHARS = 4
MIN_ARG_CHARS = 6
# A long argument (a caption) may be quoted clipped (tasks/core/base.py cuts errors to 500
# characters): from its first this-many characters on, the rest of the string is filtered.
ARG_PREFIX_CHARS = 32
# Environment variables whose names say their value is secret (AWS_SECRET_ACCESS_KEY, ...);
# FARM_* ones are judged by the settings' own secret marks instead (FARM_KEY_PREFIX is not).
SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_KEY|AUTH|DSN",
                         re.IGNORECASE)
# Sentry refuses environments with a slash or a newline, or longer than 64 characters.
ENVIRONMENT = re.compile(r"[^\s/]{1,64}")
# The dead-letter line of tasks/core/base.py (FarmTask._dead_letter).
DEADLETTER_LINE = re.compile(r"task=\S+ id=\S+ deadletter reason=(\S+)")

_options: dict[str, Any] = {}  # what init gave sentry_sdk.init, for each prefork child


def init(s: Settings, process: str) -> bool:
    """Start reporting to Sentry if FARM_SENTRY_DSN is set; True if it is. ``process`` is a tag
    (``worker batch``, ``beat``). A DSN Sentry would refuse stops start-up, without echoing it."""
    if not s.sentry_dsn:
        return False
    import sentry_sdk
    from celery.signals import beat_init, task_prerun, worker_process_init, worker_ready
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(s.sentry_dsn)
    except (BadDsn, ValueError) as exc:  # its reasons name a part, never the key
        raise SettingsError(f"FARM_SENTRY_DSN: is not a Sentry DSN ({exc}); expected "
                            "https://KEY@HOST/PROJECT (the value is not shown)") from None
    if not ENVIRONMENT.fullmatch(s.sentry_environment):
        raise SettingsError("FARM_SENTRY_ENVIRONMENT: must be 1-64 characters without spaces or "
                            f"'/', got {s.sentry_environment!r}")
    global _redact
    _redact = Redactor(secrets_of(s, os.environ), boundaries=False)
    _options.update(
        dsn=s.sentry_dsn,
        environment=s.sentry_environment,
        # No tracing: errors only. Trace headers would be added to every message sent.
        integrations=[CeleryIntegration(propagate_traces=False)],
        # Only the default integrations (logging, stdlib, excepthook...) beside Celery's: the
        # auto-enabled ones instrument every call of their library whether or not anything is
        # reported; redis-py's doubled the CPU each Redis command costs the farm (measured).
        auto_enabling_integrations=False,
        send_default_pii=False,
        # Frame variables hold task arguments and whatever the code had in hand: never sent.
        include_local_variables=False,
        event_scrubber=EventScrubber(denylist=[*DEFAULT_DENYLIST, *DENYLIST], recursive=True),
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        max_breadcrumbs=50,
        shutdown_timeout=2,  # what a stopping process waits for unsent events
    )
    sentry_sdk.init(**_options)
    sentry_sdk.get_global_scope().set_tag("process", process)
    _options["process"] = process
    worker_process_init.connect(_start_in_child, weak=False)
    task_prerun.connect(_tag_task, weak=False)
    # Said once logging is set up; the host only: the DSN's key is the project's secret.
    said = f"sentry: errors reported to {urlsplit(s.sentry_dsn).hostname} " \
           f"(environment {s.sentry_environment})"
    for started in (worker_ready, beat_init):
        started.connect(lambda **_: log.info("%s", said), weak=False)
    return True


def _start_in_child(**_: Any) -> None:
    import sentry_sdk

    options = dict(_options)
    process = options.pop("process")
    sentry_sdk.init(**options)
    sentry_sdk.get_global_scope().set_tag("process", process)


def _tag_task(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    """Tags for the task about to run, and its argument values filtered from whatever it
    reports. The Celery integration runs each task in its own isolation scope, so both go
    with the task."""
    import sentry_sdk

    if task is None:
        return
    req = task.request
    named = named_args(task, args or (), kwargs or {})
    scope = sentry_sdk.get_isolation_scope()
    delivery = req.delivery_info or {}
    queue = queue_of(str(delivery.get("routing_key") or ""))
    if not queue:
        from config.queues import ROUTES
        queue = ROUTES.get(task.name, "")
    scope.set_tag("task", task.name)
    scope.set_tag("queue", queue)
    scope.set_tag("attempt", (req.retries or 0) + 1)
    for name, value in id_tags(named).items():
        scope.set_tag(name, value)
    values = arg_values(named)
    if values:
        def hide_arguments(event: Event, hint: Hint) -> Event:
            # compiled here, for the rare task that reports, not for every task that runs
            Redactor(values, boundaries=True).walk(event)
            return event

        scope.add_event_processor(hide_arguments)


@cache
def _parameters(task_name: str, run: Callable[..., Any]) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(run).parameters)
    except (TypeError, ValueError):
        return ()


def named_args(task: Any, args: Iterable[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The message's arguments by parameter name (positional ones past the names as arg<N>)."""
    names = _parameters(task.name, task.run)
    named = {names[i] if i < len(names) else f"arg{i}": v for i, v in enumerate(args)}
    named.update(kwargs)
    return named


ID_TEXT = re.compile(r"[0-9A-Za-z_-]{1,64}")  # validation's TOKEN_ID: event, notification ids


def id_tags(named: Mapping[str, Any]) -> dict[str, str]:
    """The id arguments (``photo_id``, ``owner_id``, ``follower_id``... by the farm's naming) as
    tags: integers, or short ids of letters, digits, '-' and '_'; and the arguments chosen from
    a closed list (a cross-post's network), which cannot hold anything secret."""
    from tasks.core.validation import ACTIVITY_KINDS, FLAKY_MODES, NETWORKS

    choices = {"network": NETWORKS, "kind": ACTIVITY_KINDS, "mode": FLAKY_MODES}
    tags = {}
    for name, value in named.items():
        if name in choices and value in choices[name]:
            tags[name] = str(value)
        if not name.endswith("_id") or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and ID_TEXT.fullmatch(value)):
            tags[name] = str(value)
    return tags


def arg_values(named: Mapping[str, Any]) -> list[str]:
    """Every string in the arguments that are not ids (captions, markers, lists, JSON data)."""
    out: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)

    for name, value in named.items():
        if name not in id_tags({name: value}):
            collect(value)
    return out


def secrets_of(s: Settings, environ: Mapping[str, str]) -> list[str]:
    """What must never leave in an event: every secret setting (each Fernet key of
    FARM_TOKEN_KEYS apart), passwords in the Redis and endpoint URLs, and the values of
    environment variables whose names say they are secret."""
    found: list[str] = []
    for f in fields(s):
        value = getattr(s, f.name)
        if f.metadata.get("secret"):
            found += [value, *value.split(",")] if f.name == "token_keys" else [value]
        urls = value if isinstance(value, tuple) else (value,)
        for url in urls:
            if isinstance(url, str) and "://" in url:
                try:
                    parts = urlsplit(url)
                    found.append(parts.password or "")
                except ValueError:
                    continue
    known = {f"FARM_{f.name.upper()}" for f in fields(s)}
    for name, value in environ.items():
        if name not in known and SECRET_NAME.search(name) and not name.endswith("_FILE"):
            found.append(value)
        elif "://" in value:  # DATABASE_URL and the like: the password in it
            try:
                found.append(urlsplit(value.strip()).password or "")
            except ValueError:
                continue
    return [v.strip() for v in found if len(v.strip()) >= MIN_SECRET_CHARS]


class Redactor:
    """Replaces given values inside every string of an event (in place): anywhere for secrets,
    as whole words for task arguments (a mode "transient" must not cut "TransientError" up)."""

    def __init__(self, values: Iterable[str], *, boundaries: bool) -> None:
        least = MIN_ARG_CHARS if boundaries else MIN_SECRET_CHARS
        patterns = set()
        for value in values:
            if len(value) < least:
                continue
            if boundaries and len(value) > 2 * ARG_PREFIX_CHARS:
                patterns.add(re.escape(value[:ARG_PREFIX_CHARS]) + r".*")
            else:
                patterns.add(re.escape(value))
        body = "|".join(sorted(patterns, key=len, reverse=True))
        if body and boundaries:
            body = rf"(?<![0-9A-Za-z])(?:{body})(?![0-9A-Za-z])"
        self.pattern = re.compile(body, re.DOTALL) if body else None

    def text(self, value: str) -> str:
        return self.pattern.sub(FILTERED, value) if self.pattern else value

    def walk(self, node: Any) -> Any:
        """``node`` with every string in it redacted; dicts and lists are changed in place."""
        if self.pattern is None:
            return node
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = self.walk(value)
        elif isinstance(node, list):
            node[:] = [self.walk(v) for v in node]
        elif isinstance(node, tuple):
            return tuple(self.walk(v) for v in node)
        return node


_redact = Redactor((), boundaries=False)


def before_send(event: Event, hint: Hint) -> Event | None:
    """The last look at every event: reports of what another event already reports dropped,
    the Celery integration's argument slots removed, every secret value filtered."""
    if is_reported_deadletter(hint) or is_lost_worker(hint):
        return None
    job = event.get("extra", {}).get("celery-job")
    if isinstance(job, dict):
        job.pop("args", None)
        job.pop("kwargs", None)
    _redact.walk(event)
    return event


def is_reported_deadletter(hint: Mapping[str, Any]) -> bool:
    """The dead-letter ERROR line of a task that also raised: the integration reports that
    exception with its traceback, so the line would report it twice. A task dead-lettered for
    dying under every delivery (reason=redelivered) raises nothing: its line is the report."""
    record = hint.get("log_record")
    if not isinstance(record, logging.LogRecord) or record.name != "farm.task":
        return False
    try:
        found = DEADLETTER_LINE.match(record.getMessage())
    except Exception:
        return False
    return found is not None and found.group(1) != "redelivered"


def is_lost_worker(hint: Mapping[str, Any]) -> bool:
    """Celery's "Task handler raised error: WorkerLostError" for a pool child that died under a
    task: billiard's "Process ... exited with 'exitcode 70'" (or 'signal 9') line about the same
    death is reported, and says how it died. The message itself is redelivered; if it dies under
    every delivery, its dead letter is reported too (reason=redelivered)."""
    from billiard.exceptions import WorkerLostError

    exc_info = hint.get("exc_info")  # billiard's: its value wraps the error, its type is it
    return (isinstance(exc_info, tuple) and isinstance(exc_info[0], type)
            and issubclass(exc_info[0], WorkerLostError))


def before_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb | None:
    """An outgoing request's URL without its query or user part (tokens ride in both)."""
    data = crumb.get("data")
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        try:
            parts = urlsplit(data["url"])
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host  # IPv6
            netloc = f"{host}:{parts.port}" if parts.port else host
            data["url"] = parts._replace(netloc=netloc, query="", fragment="").geturl()
        except ValueError:
            data["url"] = FILTERED
    return crumb
