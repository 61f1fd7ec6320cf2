"""Posting a photo to a Facebook Page through facebook-sdk: ``put_photo`` to ``/{page-id}/photos``
(posting to personal timelines ended in 2018: Pages only).

facebook-sdk 3.1.0 needs three things done around it:
- its constructor refuses every Graph API version still served, so ``GraphAPI`` is built without
  one and FARM_FACEBOOK_GRAPH_VERSION is set on the instance;
- it hard-codes https://graph.facebook.com/, so the session it is given carries a transport
  adapter that rebases that prefix onto FARM_FACEBOOK_GRAPH_URL when that differs (the demo and
  the tests point the real library at a local stand-in);
- it hides the HTTP answer, so the same session's response hook keeps the status and headers:
  the usage headers say how close the app and the Page are to Facebook's limits.
Every request has FARM_SOCIAL_TIMEOUT.

Errors, as the farm's (the caller, tasks/social/crosspost.py, acts on them):
- codes 4 (the app's limit), 17, 32, 613, 80001 (the user's, the Page's, a custom and the Pages
  business-use-case limits): :class:`RateLimited` for as long as the usage headers'
  ``estimated_time_to_regain_access`` says (else DEFAULT_THROTTLE_WAIT), that scope paused
  farm-wide; after a success whose usage headers show THROTTLE_AT percent used or more, the
  scope is paused too (for the estimate, or PAUSE_WHEN_HIGH);
- 190 (the token expired or was revoked): :class:`AccountRefused` (the caller unlinks);
- 1, 2, anything Facebook marks ``is_transient``, an HTTP 5xx (with an HTML body facebook-sdk
  raises "Maintype was not text, image, or querystring"), timeouts, connection errors:
  TransientError (after the photo was sent: maybe posted);
- any other Graph error: PermanentError with its code and message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import facebook
import requests
from requests.adapters import HTTPAdapter

from config.settings import Settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.social.accounts import Account
from tasks.social.captions import names_link
from tasks.social.logs import keep_credentials_out

keep_credentials_out()  # the HTTP libraries' DEBUG lines (tasks/social/logs.py)

SDK_GRAPH_URL = facebook.FACEBOOK_GRAPH_URL  # what facebook-sdk sends to, whatever we say
THROTTLE_CODES = {4: "app", 17: "account", 32: "account", 613: "account", 80001: "account"}
TRANSIENT_CODES = {1, 2}
REVOKED_CODE = 190
THROTTLE_AT = 90.0  # percent of a usage limit at which the farm holds off
DEFAULT_THROTTLE_WAIT = 300.0  # seconds, for a throttle with no estimate (Facebook's window: 1 h)
PAUSE_WHEN_HIGH = 60.0  # seconds, after a success near a limit with no estimate
RECENT = 25  # the Page's newest uploaded photos looked through when reconciling
USAGE_HEADERS = {"x-app-usage": "app", "x-page-usage": "account",
                 "x-business-use-case-usage": "account"}

Pause = Callable[[str, float], None]  # (scope: "app" | "account", seconds)


class AccountRefused(PermanentError):
    """Facebook refused the Page token (code 190: expired, revoked, password changed). The
    account is unlinked."""


class RebaseAdapter(HTTPAdapter):
    """Sends requests for ``old`` (facebook-sdk's fixed https://graph.facebook.com/) to ``new``."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if url.startswith(self.old):
            request.url = self.new + url[len(self.old):]
        return super().send(request, *args, **kwargs)


class GraphSession(requests.Session):
    """A session for one post: rebased when the settings say so, remembering its last answer."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.last: requests.Response | None = None
        base = s.facebook_graph_url.rstrip("/") + "/"
        if base != SDK_GRAPH_URL:
            self.mount(SDK_GRAPH_URL, RebaseAdapter(SDK_GRAPH_URL, base))
        self.hooks["response"].append(self._keep)

    def _keep(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last = response


@contextmanager
def graph_for(s: Settings, account: Account) -> Iterator[tuple[Any, GraphSession]]:
    """facebook-sdk's client for the account's Page, and its session."""
    session = GraphSession(s)
    graph = facebook.GraphAPI(access_token=account.token, timeout=s.social_timeout,
                              session=session)
    graph.version = s.facebook_graph_version  # the constructor refuses current versions
    try:
        yield graph, session
    finally:
        session.close()


def post_photo(s: Settings, account: Account, image: bytes, message: str, pause: Pause) -> str:
    """Upload the photo to the Page with ``message``; the photo's id."""
    with graph_for(s, account) as (graph, session):
        result = _call(account, session, pause, lambda: graph.put_photo(
            image=("photo.jpg", image, "image/jpeg"), album_path=f"{account.page_id}/photos",
            message=message))
    photo_id = result.get("id") if isinstance(result, dict) else None
    if not photo_id:
        raise TransientError("Facebook answered the upload without a photo id")
    return str(photo_id)


def find_post(s: Settings, account: Account, link: str, pause: Pause) -> str | None:
    """The id of one of the Page's RECENT newest uploaded photos whose text holds ``link``."""
    with graph_for(s, account) as (graph, session):
        result = _call(account, session, pause, lambda: graph.get_connections(
            account.page_id, "photos", type="uploaded", fields="id,name,created_time",
            limit=RECENT))
    for photo in (result or {}).get("data") or []:
        if names_link(str(photo.get("name") or ""), link):
            return str(photo["id"])
    return None


def _call(account: Account, session: GraphSession, pause: Pause,
          call: Callable[[], Any]) -> Any:
    try:
        result = call()
    except facebook.GraphAPIError as exc:
        _hold_off_when_high(session.last, pause)
        raise _farm_error(account, exc, session.last, pause) from None
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(f"Facebook unreachable: {type(exc).__name__}") from None
    except (requests.RequestException, KeyError, ValueError) as exc:  # no content type, bad JSON
        raise TransientError(f"Facebook answered oddly: {type(exc).__name__}") from None
    _hold_off_when_high(session.last, pause)
    return result


def _hold_off_when_high(response: requests.Response | None, pause: Pause) -> None:
    """Pause each scope whose usage header shows THROTTLE_AT percent used or more."""
    if response is not None:
        for scope, used, regain in usage(response.headers):
            if used >= THROTTLE_AT:
                pause(scope, regain or PAUSE_WHEN_HIGH)


def _farm_error(account: Account, exc: Any, response: requests.Response | None,
                pause: Pause) -> Exception:
    code = exc.code if isinstance(exc.code, int) else None
    status = response.status_code if response is not None else 0
    body = exc.result.get("error") if isinstance(exc.result, dict) else None
    said = " ".join(str(exc.message).split())
    if code is None and (status >= 500 or "Maintype" in said):
        return TransientError(f"Facebook answered HTTP {status or '?'} without a Graph error "
                              f"(an HTML error page)")
    if code in THROTTLE_CODES:
        scope = THROTTLE_CODES[code]
        estimates = [regain for _, _, regain in usage(response.headers if response is not None
                                                      else {}) if regain]
        wait = max(estimates, default=DEFAULT_THROTTLE_WAIT)
        pause(scope, wait)
        return RateLimited(f"Facebook rate limit (code {code}) for {account.label}: {said}",
                           retry_after=wait)
    if code == REVOKED_CODE:
        return AccountRefused(f"Facebook refused {account.label}'s token (code 190): {said}")
    if code in TRANSIENT_CODES or (isinstance(body, dict) and body.get("is_transient")) or \
            status >= 500:
        return TransientError(f"Facebook error {code} (HTTP {status}): {said}")
    return PermanentError(f"Facebook error {code} (HTTP {status}): {said}")


def usage(headers: Any) -> list[tuple[str, float, float]]:
    """(scope, highest percent used, seconds until access is regained or 0) per usage header:
    X-App-Usage ``{"call_count": 28, "total_time": 25, "total_cputime": 25}``, X-Page-Usage
    (the same, with ``estimated_time_to_regain_access`` in minutes), X-Business-Use-Case-Usage
    ``{"<business id>": [{"type": "pages", "call_count": .., ...}]}``."""
    out = []
    for name, scope in USAGE_HEADERS.items():
        raw = headers.get(name)
        if not raw:
            continue
        try:
            parsed = json.loads(raw)
        except ValueError:
            continue
        entries: list[Any] = [parsed]
        if name == "x-business-use-case-usage" and isinstance(parsed, dict):
            entries = [e for group in parsed.values() if isinstance(group, list) for e in group]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            used = max((_number(entry.get(k)) for k in
                        ("call_count", "total_cputime", "total_time")), default=0.0)
            regain = _number(entry.get("estimated_time_to_regain_access")) * 60
            out.append((scope, used, regain))
    return out


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else 0.0
