"""``/aliases``: the account's sending aliases with their verification state and the default; create
one (its verification email goes out), make one the default, remove one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.aliases import AliasIn
from relay.api.common import check_id
from relay.api.deps import ALIAS_SCOPES, DirectoryDep
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, Viewer, blank, page, redirect, refusal, refused, validated
from relay.vocab import DEFAULT_IP_POOL

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ALIAS_SCOPES))]
NOTICES = {"created": "Alias created: its verification email is on its way.", "default": "Default alias changed.",
           "removed": "Alias removed."}


async def _page(request: Request, viewer: Viewer, directory: DirectoryDep, status: int = 200,
                error: str | None = None, notice: str | None = None) -> HTMLResponse:
    return page(request, "aliases.html", viewer, status=status, title="Aliases", error=error, notice=notice,
                aliases=await directory.aliases(viewer.ident), can_edit=viewer.can(*ALIAS_SCOPES),
                default_pool=viewer.ident.account_name)


@router.get("/aliases", response_class=HTMLResponse)
async def aliases(request: Request, viewer: Current, directory: DirectoryDep, done: str = "") -> HTMLResponse:
    return await _page(request, viewer, directory, notice=NOTICES.get(done))


@router.post("/aliases", response_class=HTMLResponse)
async def create(request: Request, viewer: Editor, directory: DirectoryDep,
                 email: Annotated[str, Form()] = "", name: Annotated[str, Form()] = "",
                 ip_pool: Annotated[str, Form()] = "", is_default: Annotated[bool, Form()] = False) -> Response:
    try:
        body = validated(AliasIn, {"email": email.strip(), "name": blank(name),
                                   "ip_pool": blank(ip_pool) or DEFAULT_IP_POOL, "is_default": is_default})
        _, warning = await directory.add_alias(viewer.ident, body.email, ip_pool=body.ip_pool, name=body.name,
                                               is_default=body.is_default)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, directory, status=err.status, error=err.message)
    if warning:
        return await _page(request, viewer, directory, notice=f"Alias created. {warning}")
    return redirect("/aliases?done=created")


async def _change(request: Request, viewer: Viewer, directory: DirectoryDep, alias_id: str, remove: bool) -> Response:
    try:
        check_id(alias_id, "Alias not found")
        if remove:
            await directory.remove_alias(viewer.ident, alias_id)
        else:
            await directory.update_alias(viewer.ident, alias_id, {"is_default": True})
    except REFUSALS as exc:
        err = refused(exc, "Alias not found")
        return await _page(request, viewer, directory, status=err.status, error=err.message)
    return redirect("/aliases?done=" + ("removed" if remove else "default"))


@router.post("/aliases/{alias_id}/default", response_class=HTMLResponse)
async def make_default(request: Request, alias_id: str, viewer: Editor, directory: DirectoryDep) -> Response:
    return await _change(request, viewer, directory, alias_id, remove=False)


@router.post("/aliases/{alias_id}/delete", response_class=HTMLResponse)
async def remove(request: Request, alias_id: str, viewer: Editor, directory: DirectoryDep) -> Response:
    return await _change(request, viewer, directory, alias_id, remove=True)
