"""The dashboard session as the HTTP front door sees it: the ``sb-access-token`` cookie (seed 004),
the dependencies that turn it into a :class:`SessionIdentity`, and the cookie's attributes.

The cookie is HttpOnly, SameSite=Lax, Path=/, and Secure when the request came over TLS or
``api.public_url`` is https. Its state-changing requests are checked for their origin by
:mod:`relay.api.csrf` (app-wide). The rules (who may log in, roles, expiry) are
:class:`relay.services.users.Users`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from starlette.requests import cookie_parser

from relay.api.common import ApiError
from relay.services.users import SessionIdentity, Users

COOKIE = "sb-access-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NOT_LOGGED_IN = "Not logged in"
ROLE_REFUSED = "Your role does not allow this (members have read-only access)"


def has_session_cookie(raws: Iterable[str]) -> bool:
    """Whether any ``Cookie`` header carries the session cookie, read by the parser the routes use
    (Starlette's, lenient): a stricter one (``http.cookies``) gives up on a sibling cookie such as
    ``expires=x`` or ``a="b`` that a same-site page can plant, and would let the session through unseen.
    For the middlewares, which see the raw headers before any route."""
    return any(cookie_parser(raw).get(COOKIE) for raw in raws)


def _users(request: Request) -> Users:
    users: Users = request.app.state.services.users
    return users


async def session_identity(request: Request) -> SessionIdentity | None:
    """The session of the request's cookie, or None (no cookie, unknown, expired or logged out)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    return await _users(request).identity(token)


MaybeSession = Annotated[SessionIdentity | None, Depends(session_identity)]


def logged_in(*any_of: str) -> Callable[..., Any]:
    """A dependency: the request's :class:`SessionIdentity` (401 without one; the cookie only, never a
    key) whose role's scopes hold one of ``any_of`` (403 otherwise; a member: reads only)."""
    needed = frozenset(any_of)

    async def dependency(request: Request, session: MaybeSession) -> SessionIdentity:
        if session is None:
            raise ApiError(401, NOT_LOGGED_IN)
        if not session.identity.permits(needed, change=request.method not in SAFE_METHODS):
            raise ApiError(403, ROLE_REFUSED)
        return session

    return dependency


AnySession = Annotated[SessionIdentity, Depends(logged_in())]
AdminSession = Annotated[SessionIdentity, Depends(logged_in("admin"))]


def cookie_secure(request: Request, public_url: str) -> bool:
    """Secure cookies when this request came over TLS, or when the gateway is published over https."""
    return request.url.scheme == "https" or public_url.startswith("https://")


def set_session_cookie(response: Response, token: str, expires: dt.datetime, secure: bool) -> None:
    max_age = max(0, int((expires - dt.datetime.now(dt.timezone.utc)).total_seconds()))
    response.set_cookie(COOKIE, token, max_age=max_age, expires=expires, path="/", secure=secure, httponly=True,
                        samesite="lax")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
