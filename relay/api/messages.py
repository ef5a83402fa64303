"""Message tracking and the sandbox.

``GET /api/v1/messages/{message_id}``: per-recipient state and the events. ``GET /api/v1/messages``
pages through the account's messages, newest first (``status`` = some recipient in that state,
``tag``, ``since``), with an opaque ``cursor``. ``GET/DELETE /api/v1/sandbox`` lists and clears
sandbox sends (stored, never delivered). Any key of the account may read (send, sandbox, admin...).
An ``admin`` key may also make a message's deferred recipients due now
(``POST /api/v1/messages/{message_id}/retry``) and delete a message (``DELETE``; 409 while a node
holds it for an attempt): the same service as ``relay queue retry|delete``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from relay.api.common import (
    PREFIX,
    TAG_MAX,
    TAG_PATTERN,
    ApiError,
    check_id,
    errors,
    field_error,
    iso,
    refusals,
)
from relay.api.deps import AdminKey, AnyKey, Services
from relay.services.queue_admin import QueueAdmin
from relay.store.queue import STATES
from relay.services.messages import MessageLog
from relay.store.tracking import TrackedMessage
from relay.vocab import Identity
from relay.vocab import NotFound

Status = Literal[STATES]  # type: ignore[valid-type]
router = APIRouter(prefix=PREFIX)


class RecipientOut(BaseModel):
    email: str
    status: str
    attempts: int
    upstream: str | None = None
    last_code: int | None = None
    last_reply: str | None = None
    next_attempt_at: str | None = None
    updated_at: str


class EventOut(BaseModel):
    type: str
    at: str
    recipient: str | None = None
    upstream: str | None = None
    code: int | None = None
    reply: str | None = None


class MessageSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    message_id: str
    status: str
    from_: str = Field(alias="from")
    subject: str | None = None
    alias_id: str | None = None
    ip_pool: str
    header_message_id: str | None = None
    size: int
    source: str
    sandbox: bool
    tags: list[str]
    metadata: dict[str, Any]
    created_at: str
    recipients: list[RecipientOut]


class MessageDetail(MessageSummary):
    events: list[EventOut]


class MessageOne(BaseModel):
    success: bool
    message: MessageDetail


class MessagePage(BaseModel):
    success: bool
    messages: list[MessageSummary]
    next_cursor: str | None = None


class SandboxPage(BaseModel):
    success: bool
    sends: list[MessageSummary]
    next_cursor: str | None = None


class Cleared(BaseModel):
    success: bool
    deleted: int


class Retried(BaseModel):
    success: bool
    recipients: int  # deferred recipients made due now


class Deleted(BaseModel):
    success: bool
    deleted: str


def message_json(msg: TrackedMessage, *, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "message_id": msg.id, "status": msg.status, "from": msg.mail_from, "subject": msg.subject,
        "alias_id": msg.alias_id, "ip_pool": msg.ip_pool, "header_message_id": msg.header_message_id,
        "size": msg.size, "source": msg.source, "sandbox": msg.sandbox, "tags": msg.tags,
        "metadata": msg.metadata, "created_at": iso(msg.created_at),
        "recipients": [{"email": r.address, "status": r.state, "attempts": r.attempts, "upstream": r.upstream,
                        "last_code": r.last_code, "last_reply": r.last_reply, "next_attempt_at": iso(r.next_attempt_at),
                        "updated_at": iso(r.updated_at)} for r in msg.recipients],
    }
    if detail:
        out["events"] = [{"type": e.type, "at": iso(e.at), "recipient": e.recipient, "upstream": e.upstream,
                          "code": e.code, "reply": e.reply} for e in msg.events]
    return out


def encode_cursor(msg: TrackedMessage) -> str:
    raw = f"{msg.created_at.astimezone(dt.UTC).isoformat()}|{msg.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, mid = raw.partition("|")
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None or not mid:
            raise ValueError(raw)
        return when, mid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise field_error("cursor", "invalid cursor") from None


async def page(svc: Services, ident: Identity, *, sandbox: bool, status: str | None = None, tag: str | None = None,
               since: dt.datetime | None = None, cursor: str | None = None, limit: int = 50
               ) -> tuple[list[dict[str, Any]], str | None]:
    after = decode_cursor(cursor) if cursor else None
    log = MessageLog(svc.runner, svc.store)
    msgs = await log.page(ident.account_id, status=status, tag=tag, since=since, sandbox=sandbox, after=after,
                          limit=limit + 1)
    more = len(msgs) > limit
    msgs = msgs[:limit]
    return [message_json(x, detail=False) for x in msgs], encode_cursor(msgs[-1]) if more else None


@router.get("/messages", tags=["messages"], response_model=MessagePage, responses=errors())
async def list_messages(ident: AnyKey, svc: Services, status: Status | None = None,
                        tag: str | None = Query(default=None, max_length=TAG_MAX, pattern=TAG_PATTERN),
                        since: dt.datetime | None = None, cursor: str | None = Query(default=None, max_length=200),
                        limit: int = Query(default=50, ge=1, le=200)) -> dict[str, Any]:
    """The account's messages (sandbox sends apart), newest first; pass ``next_cursor`` back as
    ``cursor`` for the next page."""
    items, nxt = await page(svc, ident, sandbox=False, status=status, tag=tag, since=since, cursor=cursor,
                            limit=limit)
    return {"success": True, "messages": items, "next_cursor": nxt}


@router.get("/messages/{message_id}", tags=["messages"], response_model=MessageOne, responses=errors(404))
async def get_message(message_id: str, ident: AnyKey, svc: Services) -> dict[str, Any]:
    """One message: per-recipient state (queued, deferred, delivering, delivered, bounced, suppressed,
    expired, sandbox) and every event."""
    check_id(message_id, "Message not found")
    try:
        msg = await MessageLog(svc.runner, svc.store).get(ident.account_id, message_id)
    except NotFound:
        raise ApiError(404, "Message not found") from None
    return {"success": True, "message": message_json(msg, detail=True)}


@router.post("/messages/{message_id}/retry", tags=["messages"], response_model=Retried, responses=errors(404))
async def retry_message(message_id: str, ident: AdminKey, svc: Services) -> dict[str, Any]:
    """Make the message's deferred recipients due now (as ``relay queue retry``)."""
    check_id(message_id, "Message not found")
    with refusals("Message not found"):
        n = await svc.runner.write(QueueAdmin(svc.store).retry, ident.account_id, [message_id])
    return {"success": True, "recipients": n}


@router.delete("/messages/{message_id}", tags=["messages"], response_model=Deleted, responses=errors(404, 409))
async def delete_message(message_id: str, ident: AdminKey, svc: Services) -> dict[str, Any]:
    """Delete a message: body, recipients and events (409 while a node holds it for an attempt)."""
    check_id(message_id, "Message not found")
    with refusals("Message not found"):
        await svc.runner.write(QueueAdmin(svc.store).delete, ident.account_id, message_id)
    return {"success": True, "deleted": message_id}


@router.get("/sandbox", tags=["sandbox"], response_model=SandboxPage, responses=errors())
async def list_sandbox(ident: AnyKey, svc: Services, cursor: str | None = Query(default=None, max_length=200),
                       limit: int = Query(default=50, ge=1, le=200)) -> dict[str, Any]:
    """Sandbox sends (``X-Relay-Sandbox: true`` or a sandbox-only key), newest first: stored, never delivered."""
    items, nxt = await page(svc, ident, sandbox=True, cursor=cursor, limit=limit)
    return {"success": True, "sends": items, "next_cursor": nxt}


@router.delete("/sandbox", tags=["sandbox"], response_model=Cleared, responses=errors())
async def clear_sandbox(ident: AnyKey, svc: Services) -> dict[str, Any]:
    """Delete every sandbox send of the account."""
    return {"success": True, "deleted": await MessageLog(svc.runner, svc.store).clear_sandbox(ident.account_id)}
