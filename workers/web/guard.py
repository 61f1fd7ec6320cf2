"""What keeps the demo web tier's forms honest: a CSRF token, a same-origin check, a body limit.

CSRF: the double-submit pattern. Every page sets a random token in a SameSite=Strict, HttpOnly
cookie and puts the same token in each form; a POST must carry both, equal, and (when the
browser says where it comes from: Origin, Sec-Fetch-Site) come from this origin. A page on
another site can neither read the cookie nor make a browser send it. The trusted-host check in
app.py closes the remaining hole (DNS rebinding: another site's name pointed at 127.0.0.1).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from http.cookies import SimpleCookie

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "farm_csrf"
FIELD = "csrf"  # the form field carrying the token
FORM_OVERHEAD = 64 * 1024  # bytes a form may add beyond its file (fields, multipart headers)


# On every answer: no framing (clickjacking a form), nothing but this origin's own images and
# scripts (the pages' inline polling), no type sniffing of served variants.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; img-src 'self'; connect-src 'self'; "
                               "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class CsrfCookie:
    """Gives each request a token (its cookie's, or a new one set on the response), kept in
    ``scope["state"]["csrf"]`` for the pages to put in their forms; adds SECURITY_HEADERS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = cookie_token(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1"))
        fresh = token is None
        token = token or secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = token

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if fresh:
                    headers.append("set-cookie",
                                   f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def cookie_token(header: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header: as if there were none
        return None
    morsel = jar.get(COOKIE)
    value = morsel.value if morsel else ""
    return value if 20 <= len(value) <= 100 else None


def check_post(request: Request, form: Mapping[str, object]) -> None:
    """403 unless the POST comes from this origin with the token its page was given."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site form refused")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "form from another origin refused")
    sent, kept = form.get(FIELD), cookie_token(request.headers.get("cookie", ""))
    if not (isinstance(sent, str) and kept and hmac.compare_digest(sent, kept)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


class BodyLimit:
    """413 for a request body over ``limit`` bytes: by its Content-Length before reading, and
    while reading one sent without (chunked), so no upload is spooled past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            # Outside the app's exception handling: answered here, nothing read.
            await PlainTextResponse(f"request body over {self.limit} bytes",
                                    413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)
