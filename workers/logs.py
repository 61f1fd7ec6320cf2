"""What every farm process writes to its log, made safe to read.

- Control characters escaped (``escape_records``, installed by the `farm` CLI for every
  command): a message's keyword name or error text, a stored caption, a request path Flower
  logs may hold terminal escape sequences or newlines that forge log lines. Every record is
  escaped as it is made (a log-record factory, so it holds for Celery's, Flower's and our own
  loggers alike, whatever handlers Celery's root-logger hijack installs, and in prefork
  children, which inherit it).
- Wire logging held at INFO (``hold_wire_loggers``, by `farm worker` and `farm beat`, the
  processes that set logging up at FARM_LOG_LEVEL): botocore at DEBUG writes each S3 request's
  Authorization header (key id and signature), urllib3 every URL, tweepy and oauthlib the X
  credentials; FARM_LOG_LEVEL=DEBUG does not reach them unless FARM_WIRE_LOG=1 asks.
- Celery's INFO line per finished task ("Task x[id] succeeded in 0.01s: None", and "retry:")
  dropped (``drop_celery_task_lines``, by `farm worker`): the farm's own line
  (tasks/core/base.py) says it with the task's phases, and a second record per task was a
  measurable part of a short task's cost (`farm bench drain`). Failures are logged at ERROR
  and stay; FARM_LOG_LEVEL=DEBUG keeps all.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType
from typing import Any

from config.settings import Settings
from tasks.core.text import printable

# Libraries whose DEBUG lines carry credentials: botocore the S3 Authorization header, urllib3
# every URL (a presigned one, a Graph API access_token), tweepy and requests-oauthlib the X
# request headers, oauthlib the OAuth signature base string, hpack/httpx/httpcore raw headers.
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "tweepy", "requests_oauthlib",
                "oauthlib", "hpack", "httpx", "httpcore")

# Celery's per-task success and retry lines (celery/app/trace.py); its errors are at ERROR.
TRACE_LOGGER = "celery.app.trace"

# Traceback lines that come from the interpreter and source files, not from an exception's
# message: kept multi-line. Everything else in a traceback (the "Error: message" part, notes)
# is escaped to one line like a log message.
_TRACE_LINES = ("Traceback (most recent call last):", "  File ", "  [Previous line repeated")
_CHAIN_LINES = frozenset({
    "\nThe above exception was the direct cause of the following exception:\n\n",
    "\nDuring handling of the above exception, another exception occurred:\n\n",
})

_installed = False


def hold_wire_loggers(s: Settings) -> None:
    """The WIRE_LOGGERS at INFO (or the farm's level if higher), unless FARM_WIRE_LOG asks for
    what they say on the wire."""
    if s.wire_log:
        return
    level = max(logging.INFO, logging.getLevelName(s.log_level.upper()))
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(level)


def drop_celery_task_lines(s: Settings) -> None:
    """Celery's per-task success and retry lines off, unless FARM_LOG_LEVEL is DEBUG."""
    level = logging.getLevelName(s.log_level.upper())
    if level > logging.DEBUG:
        logging.getLogger(TRACE_LOGGER).setLevel(max(logging.WARNING, level))


def escape_records() -> None:
    """Make every log record of this process with a control character in its message,
    traceback or stack escaped (``\\x1b``, ``\\n``)."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        escape_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def escape_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it itself when a handler formats
        return
    if not message.isprintable():  # the common case costs one C-level check
        record.msg, record.args = printable(message), None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters use exc_text when it is set, so this is what every handler writes.
        record.exc_text = traceback_text(record.exc_info)
    if record.stack_info:
        record.stack_info = printable(record.stack_info, multiline=True)


def traceback_text(exc_info: tuple[type[BaseException], BaseException, TracebackType | None]
                   | tuple[None, None, None]) -> str:
    """The traceback logging would write, with each exception's own text on one escaped line."""
    out = []
    for chunk in traceback.TracebackException(*exc_info).format():
        if chunk in _CHAIN_LINES or chunk.startswith(_TRACE_LINES):
            out.append(printable(chunk, multiline=True))
        else:
            out.append(printable(chunk.rstrip("\n")) + "\n")
    return "".join(out).rstrip("\n")  # as logging.Formatter.formatException leaves it
