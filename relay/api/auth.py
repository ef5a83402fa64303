"""``/api/auth``: the dashboard's login and logout (session routes, seed 003: "/api/ without /v1/").

``POST /api/auth/login`` answers ``{"success": true, "user": {...}}`` and the ``sb-access-token``
cookie; a wrong email or password is 401, counted per client address like SMTP AUTH (429 while
locked out). ``POST /api/auth/logout`` deletes the session in the store: the old cookie gets 401
afterwards. ``GET /api/auth/me`` is the session's user. The rules are in
:class:`relay.services.users.Users`; a foreign Origin is refused by :mod:`relay.api.csrf`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from relay.api.common import ApiError, Body, Ok, errors, iso, line, refusals, text
from relay.api.deps import Services
from relay.api.session import COOKIE, NOT_LOGGED_IN, AnySession, clear_session_cookie, cookie_secure, set_session_cookie
from relay.services.users import SessionIdentity
from relay.vocab import RelayError

router = APIRouter(prefix="/api/auth", tags=["dashboard session"])


class LoginIn(Body):
    email: line(320, 1)
    password: text(1024)


class UserOut(BaseModel):
    id: str
    email: str
    role: str
    account: str


class LoginOut(BaseModel):
    success: bool = True
    user: UserOut
    expires_at: str | None = None


def user_json(session: SessionIdentity) -> dict[str, Any]:
    return {"id": session.user_id, "email": session.email, "role": session.role,
            "account": session.identity.account_name}


@router.post("/login", response_model=LoginOut, responses=errors(401, 429))
async def login(request: Request, body: LoginIn, svc: Services) -> JSONResponse:
    """Log in with the user's email and password: the session cookie (HttpOnly, SameSite=Lax, Secure
    over https) and the user."""
    peer = request.client.host if request.client else ""
    with refusals(catch=(RelayError,)):
        token, expires = await svc.users.login(body.email, body.password, peer)
    old = request.cookies.get(COOKIE)
    if old:
        await svc.users.logout(old)  # one browser, one session
    session = await svc.users.identity(token)
    if session is None:  # removed in between
        raise ApiError(401, NOT_LOGGED_IN)
    response = JSONResponse({"success": True, "user": user_json(session), "expires_at": iso(expires)})
    set_session_cookie(response, token, expires, cookie_secure(request, svc.users.settings.public_url))
    return response


@router.post("/logout", response_model=Ok, responses=errors())
async def logout(request: Request, svc: Services) -> JSONResponse:
    """End the session (deleted in the store) and clear the cookie."""
    token = request.cookies.get(COOKIE)
    if token:
        await svc.users.logout(token)
    response = JSONResponse({"success": True})
    clear_session_cookie(response)
    return response


@router.get("/me", response_model=LoginOut, responses=errors(401))
async def me(session: AnySession) -> dict[str, Any]:
    """The logged-in user (401 without a session)."""
    return {"success": True, "user": user_json(session), "expires_at": iso(session.expires_at)}
