"""``/smtp-pools``: the account's upstream relays (the seeds' "SMTP pools"): add, edit, remove, and
test one (EHLO, TLS, AUTH, no mail) with its latency shown. Passwords are never shown."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.common import check_id
from relay.api.deps import ADMIN_SCOPES, UpstreamsDep
from relay.api.upstreams import PoolIn, PoolPatch
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, PageError, Viewer, blank, page, redirect, refusal, validated
from relay.store.directory import UpstreamRec
from relay.vocab import NotFound

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ADMIN_SCOPES))]
NOT_FOUND = "SMTP pool not found"
NOTICES = {"created": "SMTP pool added.", "saved": "SMTP pool saved.", "removed": "SMTP pool removed."}
Field = Annotated[str, Form()]


async def _list(request: Request, viewer: Viewer, upstreams: UpstreamsDep, status: int = 200,
                error: str | None = None, notice: str | None = None, tested: Any = None) -> HTMLResponse:
    return page(request, "pools.html", viewer, status=status, title="SMTP pools", error=error, notice=notice,
                pools=await upstreams.upstreams(viewer.ident), can_edit=viewer.can(*ADMIN_SCOPES), tested=tested)


@router.get("/smtp-pools", response_class=HTMLResponse)
async def pools(request: Request, viewer: Current, upstreams: UpstreamsDep, done: str = "") -> HTMLResponse:
    return await _list(request, viewer, upstreams, notice=NOTICES.get(done))


def _fields(name: str, host: str, port: str, username: str, password: str, encryption: str, ip_pool: str,
            priority: str, weight: str, is_active: bool) -> dict[str, Any]:
    """The form as the API's request body (blank: not given; an empty password keeps the stored one)."""
    return {"name": blank(name), "host": blank(host), "port": blank(port), "username": blank(username),
            "password": password or None, "encryption": blank(encryption), "ip_pool": blank(ip_pool),
            "priority": blank(priority), "weight": blank(weight), "is_active": is_active}


@router.post("/smtp-pools", response_class=HTMLResponse)
async def create(request: Request, viewer: Editor, upstreams: UpstreamsDep, name: Field = "", host: Field = "",
                 port: Field = "587", username: Field = "", password: Field = "", encryption: Field = "tls",
                 ip_pool: Field = "", priority: Field = "", weight: Field = "",
                 is_active: Annotated[bool, Form()] = False) -> Response:
    try:
        body = validated(PoolIn, _fields(name, host, port, username, password, encryption, ip_pool, priority, weight,
                                         is_active))
        await upstreams.add(viewer.ident, **body.model_dump())
    except REFUSALS as exc:
        err = refusal(exc)
        return await _list(request, viewer, upstreams, status=err.status, error=err.message)
    return redirect("/smtp-pools?done=created")


async def _one(viewer: Viewer, upstreams: UpstreamsDep, pool_id: str) -> UpstreamRec:
    try:
        check_id(pool_id, NOT_FOUND)
        return await upstreams.get(viewer.ident, pool_id)
    except (NotFound, *REFUSALS):
        raise PageError(404, NOT_FOUND) from None


@router.get("/smtp-pools/{pool_id}", response_class=HTMLResponse)
async def edit_page(request: Request, pool_id: str, viewer: Current, upstreams: UpstreamsDep) -> HTMLResponse:
    rec = await _one(viewer, upstreams, pool_id)
    return page(request, "pool.html", viewer, title=rec.name, pool=rec, can_edit=viewer.can(*ADMIN_SCOPES))


@router.post("/smtp-pools/{pool_id}", response_class=HTMLResponse)
async def save(request: Request, pool_id: str, viewer: Editor, upstreams: UpstreamsDep, name: Field = "",
               host: Field = "", port: Field = "", username: Field = "", password: Field = "", encryption: Field = "",
               ip_pool: Field = "", priority: Field = "", weight: Field = "",
               is_active: Annotated[bool, Form()] = False) -> Response:
    rec = await _one(viewer, upstreams, pool_id)
    fields = _fields(name, host, port, username, password, encryption, ip_pool, priority, weight, is_active)
    try:
        body = validated(PoolPatch, fields)
        changes = {f: getattr(body, f) for f in body.model_fields_set if f != "password"}
        changes["username"] = body.username  # an emptied username is no username
        await upstreams.update(viewer.ident, rec.id, body.password, changes)
    except REFUSALS as exc:
        err = refusal(exc)
        return page(request, "pool.html", viewer, status=err.status, title=rec.name, pool=rec, error=err.message,
                    can_edit=True)
    return redirect("/smtp-pools?done=saved")


@router.post("/smtp-pools/{pool_id}/test", response_class=HTMLResponse)
async def test(request: Request, pool_id: str, viewer: Editor, upstreams: UpstreamsDep) -> Response:
    """The connection test's result (success, message, latency) on the list."""
    rec = await _one(viewer, upstreams, pool_id)
    try:
        result = await upstreams.probe(viewer.ident, rec.id)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _list(request, viewer, upstreams, status=err.status, error=err.message)
    return await _list(request, viewer, upstreams, tested={"pool": rec, **result})


@router.post("/smtp-pools/{pool_id}/delete", response_class=HTMLResponse)
async def remove(request: Request, pool_id: str, viewer: Editor, upstreams: UpstreamsDep) -> Response:
    rec = await _one(viewer, upstreams, pool_id)
    try:
        await upstreams.remove(viewer.ident, rec.id)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _list(request, viewer, upstreams, status=err.status, error=err.message)
    return redirect("/smtp-pools?done=removed")
