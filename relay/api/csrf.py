"""Cross-site request forgery: ONE origin check for every state-changing request of the app (the JSON
API, the session routes and the dashboard's HTML forms alike), as ASGI middleware.

A POST, PUT, PATCH or DELETE without a Bearer key must come from the gateway's own origin when it
carries the session cookie: its ``Origin`` header (else its ``Referer``) names the request's own
``scheme://host[:port]`` or ``api.public_url``; a foreign one, or neither header, is refused with 403
``{"success": false, "error": "Cross-site request refused"}``. Without the cookie (a login, curl) a
foreign Origin or Referer is refused too (login CSRF), a missing one is not. A Bearer key is never sent
by a browser on its own, so a request with one is not a forgery.
"""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from relay.api.limits import ASGIApp, Receive, Scope, Send, answer
from relay.api.session import COOKIE

REFUSED = "Cross-site request refused"
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
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


def has_session_cookie(raw: str) -> bool:
    try:
        return bool(SimpleCookie(raw).get(COOKIE))
    except CookieError:
        return COOKIE in raw


class SameOrigin:
    """``public_url()`` is the gateway's published base URL (it follows a reload)."""

    def __init__(self, app: ASGIApp, public_url: Callable[[], str]) -> None:
        self.app, self.public_url = app, public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _CHANGES:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if headers.get("authorization", "")[:7].lower() == "bearer ":
            return await self.app(scope, receive, send)
        claimed = headers.get("origin") or headers.get("referer")
        if claimed is None and not has_session_cookie(headers.get("cookie", "")):
            return await self.app(scope, receive, send)  # no browser session to abuse: a login, curl
        own = {origin_of(self.public_url()), origin_of(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")}
        if claimed is None or origin_of(claimed) not in own - {None}:
            return await answer(send, 403, REFUSED)
        return await self.app(scope, receive, send)
