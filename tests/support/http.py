"""A plain HTTP GET for tests that poke the farm's dashboards (Flower) with and without auth."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    """(status, body); an HTTP error gives its status and no body, no answer at all gives 0."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""
