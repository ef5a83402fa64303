"""Signing in and out of the dashboard, the one-time set-password page, and the viewer of each page.

The session itself (the ``sb-access-token`` cookie, its storage and expiry, the password check and its
throttling) is :class:`relay.services.users.Users`'s; this module only shows its forms.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.deps import Services
from relay.api.session import COOKIE, MaybeSession, clear_session_cookie, cookie_secure, set_session_cookie
from relay.dashboard.web import (
    CSRF_FIELD,
    REFUSALS,
    LoginRequired,
    PageError,
    Viewer,
    csrf_token,
    page,
    redirect,
    refusal,
)
from relay.services.users import MAX_PASSWORD, MIN_PASSWORD
from relay.services.users import Users as UsersService

router = APIRouter(include_in_schema=False)
NOTICES = {"password": "Your password is set: sign in with it.", "out": "You are signed out."}


def users_of(svc: Services) -> UsersService:
    return svc.users


Users = Annotated[UsersService, Depends(users_of)]


async def current(request: Request, session: MaybeSession) -> Viewer:
    """The signed-in user of a page; without a session, 303 to /login."""
    if session is None:
        raise LoginRequired()
    return Viewer(session, csrf_token(request.cookies.get(COOKIE, "")))


Current = Annotated[Viewer, Depends(current)]


def editor(*scopes: str, roles: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A POST's viewer: their role must allow the change (the API's scopes for it, or one of ``roles``),
    and the form must carry their CSRF field; 403 otherwise."""

    async def dependency(request: Request, viewer: Current) -> Viewer:
        if (scopes and not viewer.can(*scopes)) or (roles and viewer.role not in roles):
            raise PageError(403, "Your role can see this but not change it.")
        form = await request.form()
        if not hmac.compare_digest(str(form.get(CSRF_FIELD, "")), viewer.csrf):
            raise PageError(403, "This form has expired: reload the page and try again.")
        return viewer

    return dependency


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, session: MaybeSession, done: str = "") -> Response:
    if session is not None:
        return redirect("/")
    return page(request, "login.html", None, notice=NOTICES.get(done))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, users: Users, email: Annotated[str, Form(max_length=320)] = "",
                password: Annotated[str, Form(max_length=MAX_PASSWORD)] = "") -> Response:
    """The form's POST: a session cookie and 303 to the overview; a refusal (401, 429) shows the form again."""
    peer = request.client.host if request.client else ""
    try:
        token, expires = await users.login(email.strip(), password, peer)
    except REFUSALS as exc:
        err = refusal(exc)
        return page(request, "login.html", None, status=err.status, error=err.message, email=email)
    old = request.cookies.get(COOKIE)
    if old:
        await users.logout(old)  # one browser, one session
    response = redirect("/")
    set_session_cookie(response, token, expires, cookie_secure(request, users.settings.public_url))  # follows a reload
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request, users: Users, _viewer: Annotated[Viewer, Depends(editor())]) -> Response:
    """The session is deleted in the store (the old cookie is refused afterwards)."""
    await users.logout(request.cookies.get(COOKIE, ""))
    response = redirect("/login?done=out")
    clear_session_cookie(response)
    return response


def _set_password_page(request: Request, token: str, status: int = 200, error: str | None = None) -> Response:
    """The form, with the service's own length limits (the browser checks them before it posts)."""
    return page(request, "set_password.html", None, status=status, token=token, error=error,
                min_password=MIN_PASSWORD, max_password=MAX_PASSWORD)


@router.get("/set-password/{token}", response_class=HTMLResponse)
async def set_password_page(request: Request, token: str) -> Response:
    """The one-time link's page: a form (opening it changes nothing)."""
    return _set_password_page(request, token)


@router.post("/set-password/{token}", response_class=HTMLResponse)
async def set_password(request: Request, token: str, users: Users,
                       password: Annotated[str, Form(max_length=MAX_PASSWORD)] = "",
                       confirm: Annotated[str, Form(max_length=MAX_PASSWORD)] = "") -> Response:
    if password != confirm:
        return _set_password_page(request, token, 400, "The two passwords differ.")
    try:
        await users.set_password(token, password)
    except REFUSALS as exc:
        err = refusal(exc)
        return _set_password_page(request, token, err.status, err.message)
    return redirect("/login?done=password")
