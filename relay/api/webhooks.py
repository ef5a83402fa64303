"""``/api/v1/webhooks``: register URLs for delivery events; see each one's deliveries.

The signing secret is shown once, in the answer that creates the webhook (``whsec_...``); it is
stored encrypted under the master key. Scope: ``admin``. The rules are in
:class:`relay.services.webhooks_api.WebhookAdmin`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from relay.api.common import PREFIX, Body, Ok, check_id, errors, iso, line, refusals
from relay.api.deps import AdminKey, WebhooksDep
from relay.store.webhooks import EVENTS, DeliveryRec, WebhookRec

router = APIRouter(prefix=PREFIX, tags=["webhooks"])
NOT_FOUND = "Webhook not found"


class WebhookIn(Body):
    url: line(2000, 1)
    events: list[line(20, 1)] | None = Field(default=None, max_length=len(EVENTS),
                                         description=f"Any of {', '.join(EVENTS)} (default: all)")
    description: line(200) | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None = None
    is_active: bool
    created_at: str


class NewWebhookOut(WebhookOut):
    secret: str = Field(description="The signing secret: shown here once")


class WebhookList(BaseModel):
    success: bool
    webhooks: list[WebhookOut]


class WebhookOne(BaseModel):
    success: bool
    webhook: WebhookOut


class WebhookCreated(BaseModel):
    success: bool
    webhook: NewWebhookOut


class DeliveryOut(BaseModel):
    id: int
    event_id: str
    event: str
    state: str
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None
    created_at: str
    delivered_at: str | None = None


class DeliveryList(BaseModel):
    success: bool
    deliveries: list[DeliveryOut]


def webhook_json(w: WebhookRec) -> dict[str, Any]:
    return {"id": w.id, "url": w.url, "events": list(w.events), "description": w.description,
            "is_active": w.is_active, "created_at": iso(w.created_at)}


def delivery_json(d: DeliveryRec) -> dict[str, Any]:
    return {"id": d.id, "event_id": d.event_id, "event": d.event_type, "state": d.state, "attempts": d.attempts,
            "last_status": d.last_status, "last_error": d.last_error,
            "next_attempt_at": iso(d.next_attempt_at) if d.state == "pending" else None,
            "created_at": iso(d.created_at), "delivered_at": iso(d.delivered_at)}


Webhooks = WebhooksDep


@router.get("/webhooks", response_model=WebhookList, responses=errors())
async def list_webhooks(ident: AdminKey, webhooks: Webhooks) -> dict[str, Any]:
    return {"success": True, "webhooks": [webhook_json(w) for w in await webhooks.webhooks_of(ident.account_id)]}


@router.post("/webhooks", response_model=WebhookCreated, responses=errors(409))
async def create_webhook(body: WebhookIn, ident: AdminKey, webhooks: Webhooks) -> dict[str, Any]:
    """Register an endpoint. Each event is POSTed as JSON with ``X-Relay-Signature: t=<unix>,v1=<hex
    HMAC-SHA256(secret, "<t>." + body)>``, and retried with backoff until it answers 2xx."""
    with refusals():
        rec, secret = await webhooks.create(ident.account_id, body.url, body.events, body.description)
    return {"success": True, "webhook": {**webhook_json(rec), "secret": secret}}


@router.get("/webhooks/{webhook_id}", response_model=WebhookOne, responses=errors(404))
async def get_webhook(webhook_id: str, ident: AdminKey, webhooks: Webhooks) -> dict[str, Any]:
    check_id(webhook_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return {"success": True, "webhook": webhook_json(await webhooks.get(ident.account_id, webhook_id))}


@router.delete("/webhooks/{webhook_id}", response_model=Ok, responses=errors(404))
async def delete_webhook(webhook_id: str, ident: AdminKey, webhooks: Webhooks) -> dict[str, Any]:
    """Remove the endpoint and its pending deliveries."""
    check_id(webhook_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        await webhooks.delete(ident.account_id, webhook_id)
    return {"success": True}


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryList, responses=errors(404))
async def list_deliveries(webhook_id: str, ident: AdminKey, webhooks: Webhooks,
                          limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
    """The webhook's deliveries, newest first: pending (with the next attempt), delivered or failed."""
    check_id(webhook_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        deliveries = await webhooks.deliveries(ident.account_id, webhook_id, limit)
    return {"success": True, "deliveries": [delivery_json(d) for d in deliveries]}
