"""``/suppressions``: the account's suppression list: add, remove, import a CSV file, export it as CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from relay.api.deps import ADMIN_SCOPES, SuppressionsDep
from relay.api.suppressions import SuppressionIn
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, Viewer, blank, page, redirect, refusal, secured, validated
from relay.services.suppressions import REASONS

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ADMIN_SCOPES))]
SHOWN = 1000
IMPORT_MAX = 5 * 1024 * 1024  # bytes of CSV one upload may carry (the request body cap applies first)
NOTICES = {"added": "Address suppressed.", "removed": "Address taken off the list."}


async def _page(request: Request, viewer: Viewer, suppressions: SuppressionsDep, status: int = 200,
                error: str | None = None, notice: str | None = None) -> HTMLResponse:
    entries = await suppressions.entries(viewer.ident.account_id, reason=None, limit=SHOWN)
    return page(request, "suppressions.html", viewer, status=status, title="Suppressions", error=error,
                notice=notice, entries=entries, shown=SHOWN, reasons=REASONS, can_edit=viewer.can(*ADMIN_SCOPES))


@router.get("/suppressions", response_class=HTMLResponse)
async def suppressions_page(request: Request, viewer: Current, suppressions: SuppressionsDep,
                            done: str = "") -> HTMLResponse:
    return await _page(request, viewer, suppressions, notice=NOTICES.get(done))


@router.post("/suppressions", response_class=HTMLResponse)
async def add(request: Request, viewer: Editor, suppressions: SuppressionsDep, email: Annotated[str, Form()] = "",
              reason: Annotated[str, Form()] = "manual", detail: Annotated[str, Form()] = "") -> Response:
    try:
        body = validated(SuppressionIn, {"email": email.strip(), "reason": reason, "detail": blank(detail)})
        await suppressions.add(viewer.ident.account_id, body.email, body.reason, body.detail, None)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, suppressions, status=err.status, error=err.message)
    return redirect("/suppressions?done=added")


@router.post("/suppressions/remove", response_class=HTMLResponse)
async def remove(request: Request, viewer: Editor, suppressions: SuppressionsDep,
                 email: Annotated[str, Form(max_length=320)] = "") -> Response:
    try:
        await suppressions.remove(viewer.ident.account_id, email.strip())
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, suppressions, status=err.status,
                           error="That address is not on the list." if err.status == 404 else err.message)
    return redirect("/suppressions?done=removed")


@router.post("/suppressions/import", response_class=HTMLResponse)
async def import_csv(request: Request, viewer: Editor, suppressions: SuppressionsDep,
                     file: Annotated[UploadFile, File()], reason: Annotated[str, Form()] = "manual") -> Response:
    """All rows or none: a bad row is named and nothing is stored."""
    raw = await file.read(IMPORT_MAX + 1)
    try:
        if len(raw) > IMPORT_MAX:
            raise ValueError(f"The file is larger than {IMPORT_MAX // (1024 * 1024)} MB")
        added, updated = await suppressions.import_rows(viewer.ident.account_id, raw.decode("utf-8-sig"),
                                                       reason if reason in REASONS else "manual")
    except (ValueError, *REFUSALS) as exc:
        message = refusal(exc).message if isinstance(exc, REFUSALS) else str(exc)
        return await _page(request, viewer, suppressions, status=400, error=f"Nothing imported: {message}")
    return await _page(request, viewer, suppressions, notice=f"Imported: {added} added, {updated} updated.")


@router.get("/suppressions.csv")
async def export_csv(viewer: Current, suppressions: SuppressionsDep) -> Response:
    """The active entries, in the CLI's export format (the import reads it back)."""
    text = await suppressions.export_csv(viewer.ident.account_id)
    return secured(Response(text, media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'}))
