"""``/domains``: the account's sending domains and their verification state; ``/domains/{id}``: the DNS
records to publish (with copy buttons), verify, and DKIM key rotation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.common import check_id
from relay.api.deps import ADMIN_SCOPES, DirectoryDep
from relay.api.domains import DomainIn
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, PageError, Viewer, page, redirect, refusal, refused, validated
from relay.vocab import NotFound

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ADMIN_SCOPES))]
NOT_FOUND = "Domain not found"
NOTICES = {"verified": "Verification checked.", "rotated": "New DKIM keys: publish their records; signing switches "
           "to them once DNS shows them.", "created": "Domain added: publish these records, then verify."}


async def _list(request: Request, viewer: Viewer, directory: DirectoryDep, status: int = 200,
                error: str | None = None) -> HTMLResponse:
    return page(request, "domains.html", viewer, status=status, title="Domains", error=error,
                domains=await directory.domains(viewer.ident), can_edit=viewer.can(*ADMIN_SCOPES))


@router.get("/domains", response_class=HTMLResponse)
async def domains(request: Request, viewer: Current, directory: DirectoryDep) -> HTMLResponse:
    return await _list(request, viewer, directory)


@router.post("/domains", response_class=HTMLResponse)
async def create(request: Request, viewer: Editor, directory: DirectoryDep,
                 domain: Annotated[str, Form()] = "") -> Response:
    try:
        body = validated(DomainIn, {"domain": domain.strip()})
        rec, _ = await directory.add_domain(viewer.ident, body.domain)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _list(request, viewer, directory, status=err.status, error=err.message)
    return redirect(f"/domains/{rec.id}?done=created")


async def _show(request: Request, viewer: Viewer, directory: DirectoryDep, domain_id: str, status: int = 200,
                error: str | None = None, notice: str | None = None) -> HTMLResponse:
    try:
        check_id(domain_id, NOT_FOUND)
        rec, records = await directory.domain(viewer.ident, domain_id)
    except (NotFound, *REFUSALS):
        raise PageError(404, NOT_FOUND) from None
    return page(request, "domain.html", viewer, status=status, title=rec.name, error=error, notice=notice, domain=rec,
                records=records, can_edit=viewer.can(*ADMIN_SCOPES))


@router.get("/domains/{domain_id}", response_class=HTMLResponse)
async def domain(request: Request, domain_id: str, viewer: Current, directory: DirectoryDep,
                 done: str = "") -> HTMLResponse:
    return await _show(request, viewer, directory, domain_id, notice=NOTICES.get(done))


async def _act(request: Request, viewer: Viewer, directory: DirectoryDep, domain_id: str, action: str) -> Response:
    try:
        check_id(domain_id, NOT_FOUND)
        if action == "verified":
            await directory.verify_domain(viewer.ident, domain_id)
        else:
            await directory.rotate_dkim(viewer.ident, domain_id)
    except REFUSALS as exc:
        err = refused(exc, NOT_FOUND)
        return await _show(request, viewer, directory, domain_id, status=err.status, error=err.message)
    return redirect(f"/domains/{domain_id}?done={action}")


@router.post("/domains/{domain_id}/verify", response_class=HTMLResponse)
async def verify(request: Request, domain_id: str, viewer: Editor, directory: DirectoryDep) -> Response:
    return await _act(request, viewer, directory, domain_id, "verified")


@router.post("/domains/{domain_id}/rotate", response_class=HTMLResponse)
async def rotate(request: Request, domain_id: str, viewer: Editor, directory: DirectoryDep) -> Response:
    return await _act(request, viewer, directory, domain_id, "rotated")
