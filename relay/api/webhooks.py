"""``/api/v1/webhooks``: register URLs for delivery events; see each one's deliveries.

The signing secret is shown once, in the answer that creates the webhook (``whsec_...``); it is
stored encrypted under the master key. Scope: ``admin``.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from relay.events import webhooks
from relay.api.common import PREFIX, ApiError, Body, Ok, authenticated, check_id, errors, field_error, iso, line
from relay.vocab import NotFound
from relay.submission.pipeline import Identity
from relay.store.webhooks import EVENTS, DeliveryRec, WebhookRec, new_webhook_id


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


def router(gateway: Any) -> APIRouter:
    r = APIRouter(prefix=PREFIX, tags=["webhooks"])
    runner = gateway.runner
    admin_scope = Depends(authenticated(gateway, "admin"))

    def svc() -> webhooks.WebhookService:
        return webhooks.service(gateway)

    async def own(ident: Identity, webhook_id: str) -> WebhookRec:
        check_id(webhook_id, "Webhook not found")
        try:
            return await runner.read(svc().store.get, ident.account_id, webhook_id)
        except NotFound:
            raise ApiError(404, "Webhook not found") from None

    @r.get("/webhooks", response_model=WebhookList, responses=errors())
    async def list_webhooks(ident: Identity = admin_scope) -> dict[str, Any]:
        return {"success": True, "webhooks": [webhook_json(w) for w in
                                              await runner.read(svc().store.list, ident.account_id)]}

    @r.post("/webhooks", response_model=WebhookCreated, responses=errors())
    async def create_webhook(body: WebhookIn, ident: Identity = admin_scope) -> dict[str, Any]:
        """Register an endpoint. Each event is POSTed as JSON with ``X-Relay-Signature: t=<unix>,v1=<hex
        HMAC-SHA256(secret, "<t>." + body)>``, and retried with backoff until it answers 2xx."""
        parts = urlsplit(body.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise field_error("url", "must be an http:// or https:// URL")
        events = sorted(set(body.events or EVENTS))
        bad = [e for e in events if e not in EVENTS]
        if bad:
            raise field_error("events", f"unknown event {bad[0]!r}; choose from {', '.join(EVENTS)}")
        secret = "whsec_" + secrets.token_urlsafe(32)
        wid = new_webhook_id()
        service = svc()
        rec = await runner.write(service.store.create, webhook_id=wid, account_id=ident.account_id, url=body.url,
                                 events=events, secret_enc=gateway.master_key.encrypt_str(secret, aad=wid),
                                 description=body.description)
        await service.refresh()
        return {"success": True, "webhook": {**webhook_json(rec), "secret": secret}}

    @r.get("/webhooks/{webhook_id}", response_model=WebhookOne, responses=errors(404))
    async def get_webhook(webhook_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        return {"success": True, "webhook": webhook_json(await own(ident, webhook_id))}

    @r.delete("/webhooks/{webhook_id}", response_model=Ok, responses=errors(404))
    async def delete_webhook(webhook_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """Remove the endpoint and its pending deliveries."""
        await own(ident, webhook_id)
        service = svc()
        try:
            await runner.write(service.store.delete, ident.account_id, webhook_id)
        except NotFound:
            raise ApiError(404, "Webhook not found") from None
        service.forget(webhook_id)
        await service.refresh()
        return {"success": True}

    @r.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryList, responses=errors(404))
    async def list_deliveries(webhook_id: str, ident: Identity = admin_scope,
                              limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
        """The webhook's deliveries, newest first: pending (with the next attempt), delivered or failed."""
        await own(ident, webhook_id)
        return {"success": True, "deliveries": [delivery_json(d) for d in
                                                await runner.read(svc().store.deliveries, webhook_id, limit)]}

    return r
