"""``/keys``: the account's API keys: create one with its scopes (the key is shown once, on the page
that answers the form), revoke one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.common import check_id
from relay.api.deps import ADMIN_SCOPES, DirectoryDep
from relay.api.keys import KeyIn
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, Viewer, blank, page, redirect, refusal, refused, validated
from relay.vocab import SEND_SCOPES

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ADMIN_SCOPES))]
SCOPES = (*sorted(SEND_SCOPES), "sandbox", "aliases", "admin")  # what an account's key may hold (never operator)
NOTICES = {"revoked": "Key revoked."}


async def _page(request: Request, viewer: Viewer, directory: DirectoryDep, status: int = 200, error: str | None = None,
                notice: str | None = None, created: str | None = None) -> HTMLResponse:
    keys = [k for k in await directory.keys(viewer.ident) if not k.revoked]
    return page(request, "keys.html", viewer, status=status, title="API keys", error=error, notice=notice, keys=keys,
                scopes=SCOPES, created=created, can_edit=viewer.can(*ADMIN_SCOPES))


@router.get("/keys", response_class=HTMLResponse)
async def keys(request: Request, viewer: Current, directory: DirectoryDep, done: str = "") -> HTMLResponse:
    return await _page(request, viewer, directory, notice=NOTICES.get(done))


@router.post("/keys", response_class=HTMLResponse)
async def create(request: Request, viewer: Editor, directory: DirectoryDep, name: Annotated[str, Form()] = "",
                 scope: Annotated[list[str] | None, Form()] = None) -> Response:
    """The answer shows the whole key, once; it is stored only as a hash."""
    try:
        body = validated(KeyIn, {"scopes": scope or [], "name": blank(name)})
        full, _ = await directory.create_key(viewer.ident, list(body.scopes), body.name)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, directory, status=err.status, error=err.message)
    return await _page(request, viewer, directory, created=full,
                       notice="Key created. Copy it now: it is not shown again.")


@router.post("/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, key_id: str, viewer: Editor, directory: DirectoryDep) -> Response:
    try:
        check_id(key_id, "API key not found")
        await directory.revoke_key(viewer.ident, key_id)
    except REFUSALS as exc:
        err = refused(exc, "API key not found")
        return await _page(request, viewer, directory, status=err.status, error=err.message)
    return redirect("/keys?done=revoked")
