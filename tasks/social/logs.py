"""Users' credentials kept out of the logs, even at FARM_LOG_LEVEL=DEBUG.

The farm's own code never logs a request. The libraries under it do, at DEBUG: oauthlib and
requests_oauthlib log what they sign (the X access token among it), and urllib3 logs each
request line, which for facebook-sdk's GETs carries the Page token as ``access_token=``. Their
signing chatter is dropped, and tokens in request lines are redacted, by filters on those
loggers (their other records, and every other logger, are left alone).
"""

from __future__ import annotations

import logging
import re

SIGNING_LOGGERS = ("oauthlib", "oauthlib.oauth1.rfc5849", "oauthlib.oauth1.rfc5849.signature",
                   "requests_oauthlib.oauth1_auth", "requests_oauthlib.oauth1_session")
REQUEST_LINE_LOGGERS = ("urllib3.connectionpool",)
_TOKEN = re.compile(r"((?:access_token|input_token|client_secret)=)[^&\s\"']+")


class DropDebug(logging.Filter):
    """Drops a signing library's DEBUG records (they spell out tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


class RedactTokens(logging.Filter):
    """Replaces the value of ``access_token=`` (and the like) in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "_token=" in message or "_secret=" in message:
            record.msg, record.args = _TOKEN.sub(r"\1[redacted]", message), None
        return True


def keep_credentials_out() -> None:
    """Install the filters (once per process; safe to call again)."""
    for name, kind in [*((n, DropDebug) for n in SIGNING_LOGGERS),
                       *((n, RedactTokens) for n in REQUEST_LINE_LOGGERS)]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
