"""``/users``: the people of the account. An owner or admin adds one (the answer shows the one-time
link that sets the password), removes one, or resets a password (a new link); members only see."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.common import check_id
from relay.dashboard.auth import Current, Users, editor
from relay.dashboard.web import MANAGERS, REFUSALS, Viewer, page, redirect, refusal, refused
from relay.services.users import Users as UsersService
from relay.store.users import UserRec

router = APIRouter(include_in_schema=False)
Manager = Annotated[Viewer, Depends(editor(roles=MANAGERS))]
ROLES = ("owner", "admin", "member")
NOTICES = {"removed": "User removed: their sessions ended."}


async def _page(request: Request, viewer: Viewer, users: UsersService, status: int = 200, error: str | None = None,
                notice: str | None = None, link: str | None = None) -> HTMLResponse:
    return page(request, "users.html", viewer, status=status, title="Users", error=error, notice=notice, link=link,
                users=await users.list(viewer.ident.account_id), roles=ROLES, can_edit=viewer.manages_users)


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, viewer: Current, users: Users, done: str = "") -> HTMLResponse:
    return await _page(request, viewer, users, notice=NOTICES.get(done))


@router.post("/users", response_class=HTMLResponse)
async def add(request: Request, viewer: Manager, users: Users, email: Annotated[str, Form(max_length=320)] = "",
              role: Annotated[str, Form(max_length=20)] = "member") -> Response:
    """The new user sets their own password through the one-time link shown here."""
    try:
        rec, link = await users.add(viewer.ident.account_name, email.strip(), role, None, by=viewer.session)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, users, status=err.status, error=err.message)
    return await _page(request, viewer, users, link=link,
                       notice=f"{rec.email} added. Send them this link to set their password (it works once).")


async def _one(viewer: Viewer, users: UsersService, user_id: str) -> UserRec:
    check_id(user_id, "User not found")
    return await users.get(viewer.ident.account_id, user_id)


@router.post("/users/{user_id}/remove", response_class=HTMLResponse)
async def remove(request: Request, user_id: str, viewer: Manager, users: Users) -> Response:
    try:
        rec = await _one(viewer, users, user_id)
        await users.remove(viewer.ident.account_id, rec.id, by=viewer.session)
    except REFUSALS as exc:
        err = refused(exc, "User not found")
        return await _page(request, viewer, users, status=err.status, error=err.message)
    return redirect("/users?done=removed")


@router.post("/users/{user_id}/reset", response_class=HTMLResponse)
async def reset(request: Request, user_id: str, viewer: Manager, users: Users) -> Response:
    """A new one-time link; the old password stops working once the new one is set."""
    try:
        rec = await _one(viewer, users, user_id)
        link = await users.reset_password(viewer.ident.account_id, rec.id, by=viewer.session)
    except REFUSALS as exc:
        err = refused(exc, "User not found")
        return await _page(request, viewer, users, status=err.status, error=err.message)
    return await _page(request, viewer, users, link=link,
                       notice=f"Send {rec.email} this link to set a new password (it works once).")
