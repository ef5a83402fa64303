"""``/webhooks``: the account's webhooks; ``/webhooks/{id}``: its deliveries and their retries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from relay.api.common import check_id
from relay.api.deps import ADMIN_SCOPES, WebhooksDep
from relay.api.webhooks import WebhookIn
from relay.dashboard.auth import Current, editor
from relay.dashboard.web import REFUSALS, PageError, Viewer, blank, page, redirect, refusal, validated
from relay.store.webhooks import EVENTS
from relay.vocab import NotFound

router = APIRouter(include_in_schema=False)
Editor = Annotated[Viewer, Depends(editor(*ADMIN_SCOPES))]
NOT_FOUND = "Webhook not found"
DELIVERIES = 100
NOTICES = {"removed": "Webhook removed."}


async def _page(request: Request, viewer: Viewer, webhooks: WebhooksDep, status: int = 200, error: str | None = None,
                notice: str | None = None, secret: str | None = None) -> HTMLResponse:
    return page(request, "webhooks.html", viewer, status=status, title="Webhooks", error=error, notice=notice,
                webhooks=await webhooks.webhooks_of(viewer.ident.account_id), events=EVENTS, secret=secret,
                can_edit=viewer.can(*ADMIN_SCOPES))


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, viewer: Current, webhooks: WebhooksDep, done: str = "") -> HTMLResponse:
    return await _page(request, viewer, webhooks, notice=NOTICES.get(done))


@router.post("/webhooks", response_class=HTMLResponse)
async def create(request: Request, viewer: Editor, webhooks: WebhooksDep, url: Annotated[str, Form()] = "",
                 description: Annotated[str, Form()] = "", event: Annotated[list[str] | None, Form()] = None) -> Response:
    """The signing secret is shown once, on the answer."""
    try:
        body = validated(WebhookIn, {"url": url.strip(), "events": event or None, "description": blank(description)})
        _, secret = await webhooks.create(viewer.ident.account_id, body.url, body.events, body.description)
    except REFUSALS as exc:
        err = refusal(exc)
        return await _page(request, viewer, webhooks, status=err.status, error=err.message)
    return await _page(request, viewer, webhooks, secret=secret,
                       notice="Webhook added. Copy its signing secret now: it is not shown again.")


@router.get("/webhooks/{webhook_id}", response_class=HTMLResponse)
async def deliveries(request: Request, webhook_id: str, viewer: Current, webhooks: WebhooksDep) -> HTMLResponse:
    try:
        check_id(webhook_id, NOT_FOUND)
        hook = await webhooks.get(viewer.ident.account_id, webhook_id)
        recs = await webhooks.deliveries(viewer.ident.account_id, webhook_id, DELIVERIES)
    except (NotFound, *REFUSALS):
        raise PageError(404, NOT_FOUND) from None
    return page(request, "webhook.html", viewer, title=hook.url, hook=hook, deliveries=recs,
                can_edit=viewer.can(*ADMIN_SCOPES))


@router.post("/webhooks/{webhook_id}/delete", response_class=HTMLResponse)
async def remove(request: Request, webhook_id: str, viewer: Editor, webhooks: WebhooksDep) -> Response:
    try:
        check_id(webhook_id, NOT_FOUND)
        await webhooks.delete(viewer.ident.account_id, webhook_id)
    except (NotFound, *REFUSALS):
        raise PageError(404, NOT_FOUND) from None
    return redirect("/webhooks?done=removed")
