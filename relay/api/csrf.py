"""Cross-site request forgery: ONE origin check for every state-changing request of the app (the JSON
API, the session routes and the dashboard's HTML forms alike), as ASGI middleware.

A POST, PUT, PATCH or DELETE (any method but GET, HEAD and OPTIONS) without a Bearer key must come
from the gateway's own origin when it carries the session cookie: its ``Origin`` header (else its
``Referer``) names the request's own ``scheme://host[:port]`` or ``api.public_url``; a foreign one, or
neither header, is refused with 403 ``{"success": false, "error": "Cross-site request refused"}``.
Without the cookie (a login, curl) a foreign Origin or Referer is refused too (login CSRF), a missing
one is not. A Bearer key is never sent by a browser on its own, so a request with one is not a forgery.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from relay.api.limits import ASGIApp, Receive, Scope, Send, answer
from relay.api.session import SAFE_METHODS, has_session_cookie

REFUSED = "Cross-site request refused"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` of a URL (default ports explicit, lower case), None if it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


class SameOrigin:
    """``public_url()`` is the gateway's published base URL (it follows a reload)."""

    def __init__(self, app: ASGIApp, public_url: Callable[[], str]) -> None:
        self.app, self.public_url = app, public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("method", "")).upper() in SAFE_METHODS:
            return await self.app(scope, receive, send)  # any other method (even "post", "PROPFIND") is checked
        raw = scope.get("headers") or []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        cookies = [v.decode("latin-1") for k, v in raw if k.lower() == b"cookie"]
        if headers.get("authorization", "")[:7].lower() == "bearer ":
            return await self.app(scope, receive, send)
        claimed = headers.get("origin") or headers.get("referer")
        if claimed is None and not has_session_cookie(cookies):
            return await self.app(scope, receive, send)  # no browser session to abuse: a login, curl
        own = {origin_of(self.public_url()), origin_of(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")}
        if claimed is None or origin_of(claimed) not in own - {None}:
            return await answer(send, 403, REFUSED)
        return await self.app(scope, receive, send)
