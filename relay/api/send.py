"""``POST /api/v1/send``: the HTTP front door onto the one submission pipeline.

It translates only: JSON -> Context (listener ``api``) -> ``pipeline.mail`` (the alias: ``alias_id``,
else the one matching ``from.email``) -> ``pipeline.rcpt`` per recipient -> the MIME message
(:mod:`relay.submission.compose`) -> ``pipeline.data`` (policies, DKIM, durable commit). Answers as the seeds:

- 200 ``{success, message_id, provider, timestamp}`` once the message is committed;
- 202 ``{success: false, queued: true, message, message_id}`` when the alias's pool has no healthy
  upstream right now: committed all the same, and retried;
- 422 ``{success: false, suppressed: true, error}`` when EVERY recipient is suppressed (nothing is
  stored). When only some are, the others get the message and the 200 lists the held-back ones in
  ``suppressed_recipients`` (they are stored with state ``suppressed`` and a ``suppressed`` event);
- a replayed ``idempotency_key`` (24 h) answers the original result with ``idempotent: true``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from relay.events import webhooks
from relay.api.common import (PREFIX, SEND_SCOPES, SUPPRESSED_MESSAGE, ApiError, Body, Text, admin_error,
                              authenticated, errors, field_error, iso, line, relay_error)
from relay.submission.compose import Attachment, ComposeError, Draft, Mailbox, check_address, compose
from relay.vocab import NotFound, RelayError
from relay.submission.idempotency import Original
from relay.submission.pipeline import ACCEPTED_AT, IDEMPOTENT, METADATA, QUEUED, SUPPRESSED, TAGS, Context, Identity
from relay.store import utcnow

_TAG = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,64}$")


def _email(value: str) -> str:
    return check_address(value, "email")


def _tag(value: str) -> str:
    if not _TAG.match(value):
        raise ValueError("tags are 1-64 characters: letters, digits and _ . : @ / + -")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]


class AddressIn(Body):
    email: Email
    name: line(200) | None = None


class AttachmentIn(Body):
    filename: line(255, 1)
    content: str = Field(description="The file, base64-encoded")
    content_type: line(255) = Field(default="application/octet-stream")
    content_id: line(200) | None = Field(default=None, description="Makes the part inline, for cid: links in the HTML")


class SendRequest(Body):
    from_: AddressIn = Field(alias="from")
    to: list[AddressIn] = Field(min_length=1, max_length=100)
    cc: list[AddressIn] = Field(default_factory=list, max_length=50)
    bcc: list[AddressIn] = Field(default_factory=list, max_length=50)
    reply_to: AddressIn | None = None
    subject: line(998)
    html: Text | None = None
    text: Text | None = None
    alias_id: line(100) | None = Field(default=None, description="The sending alias (ali_...): its address and pool")
    idempotency_key: line(128, 1) | None = None
    tags: list[Annotated[str, AfterValidator(_tag)]] = Field(default_factory=list, max_length=10)
    metadata: dict[line(64, 1), line(1000)] = Field(default_factory=dict, max_length=50)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)

    model_config = {"populate_by_name": True}


class SendResult(BaseModel):
    success: bool
    message_id: str
    provider: str
    timestamp: str
    idempotent: bool | None = None
    suppressed_recipients: list[str] | None = None


class Queued(BaseModel):
    success: bool
    queued: bool
    message: str
    message_id: str
    timestamp: str
    idempotent: bool | None = None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _result(message_id: str, provider: str, queued: bool, timestamp: Any, *, idempotent: bool = False,
            suppressed: list[str] | None = None) -> JSONResponse:
    if queued:
        body: dict[str, Any] = {"success": False, "queued": True, "message": "Email queued for retry",
                                "message_id": message_id, "timestamp": iso(timestamp)}
    else:
        body = {"success": True, "message_id": message_id, "provider": provider, "timestamp": iso(timestamp)}
    if idempotent:
        body["idempotent"] = True
    if suppressed:
        body["suppressed_recipients"] = suppressed
    return JSONResponse(body, status_code=202 if queued else 200)


def _replay(original: Original) -> JSONResponse:
    return _result(original.message_id, original.provider, original.queued, original.timestamp, idempotent=True)


def _attachments(items: list[AttachmentIn]) -> tuple[Attachment, ...]:
    out = []
    for i, a in enumerate(items):
        try:
            content = base64.b64decode(a.content, validate=True)
        except (binascii.Error, ValueError):
            raise field_error("attachments", f"{i}.content: not valid base64") from None
        out.append(Attachment(a.filename, content, a.content_type, a.content_id))
    return tuple(out)


def _recipients(body: SendRequest) -> list[str]:
    """to + cc + bcc, each address once (case-insensitively), in that order."""
    seen, out = set(), []
    for a in (*body.to, *body.cc, *body.bcc):
        low = a.email.lower()
        if low not in seen:
            seen.add(low)
            out.append(a.email)
    return out


def router(gateway: Any) -> APIRouter:
    r = APIRouter(prefix=PREFIX, tags=["send"])
    pipeline = gateway.pipeline
    auth = authenticated(gateway, *SEND_SCOPES, "sandbox")

    def pool_healthy(pool: str) -> bool:
        rt = gateway.router
        return any(rt.healthy(u) for u in rt.pools.get(pool, ()))

    @r.post("/send", response_model=None, summary="Send an email",
            responses={200: {"model": SendResult, "description": "Accepted: committed, handed to delivery"},
                       202: {"model": Queued, "description": "Queued for retry: the pool is down right now"},
                       **errors(409, 422, 429, 503)})
    async def send(request: Request, body: SendRequest, ident: Identity = Depends(auth),
                   x_relay_sandbox: str | None = Header(default=None),
                   x_misarmail_sandbox: str | None = Header(default=None)) -> JSONResponse:
        """Send one message through the same pipeline as SMTP (alias check, policies, DKIM, durable
        commit before the answer). ``X-Relay-Sandbox: true`` (or ``X-MisarMail-Sandbox``), or a key
        holding only the ``sandbox`` scope, stores the send without delivering it."""
        sandbox = _truthy(x_relay_sandbox) or _truthy(x_misarmail_sandbox) or not ident.scopes & SEND_SCOPES
        if sandbox and "sandbox" not in ident.scopes:
            raise ApiError(403, "Sandbox sends need an API key with the sandbox scope")
        if body.html is None and body.text is None:
            raise field_error("html", "html or text is required")
        key = body.idempotency_key
        if key:
            original = await pipeline.idempotency.lookup(ident.account_id, key)
            if original is not None:
                return _replay(original)
        sender = body.from_.email
        if body.alias_id:
            try:
                alias = await gateway.runner.read(gateway.store.directory.get_alias, body.alias_id)
            except NotFound:
                alias = None
            if alias is None or alias.id != body.alias_id or alias.account_id != ident.account_id:
                raise field_error("alias_id", "Unknown alias")
            sender = alias.email
        draft = Draft(sender=Mailbox(body.from_.email, body.from_.name),
                      to=tuple(Mailbox(a.email, a.name) for a in body.to),
                      cc=tuple(Mailbox(a.email, a.name) for a in body.cc),
                      reply_to=Mailbox(body.reply_to.email, body.reply_to.name) if body.reply_to else None,
                      subject=body.subject, text=body.text, html=body.html, attachments=_attachments(body.attachments))
        try:
            raw = compose(draft)
        except ComposeError as exc:
            raise admin_error(exc) from None
        ctx = Context(listener="api", peer=request.client.host if request.client else "", identity=ident,
                      sandbox=sandbox, idempotency_key=key)
        try:
            await pipeline.mail(ctx, sender)
        except RelayError as exc:
            raise relay_error(exc) from None
        suppressed: dict[str, str] = {}
        try:
            for rcpt in _recipients(body):
                try:
                    await pipeline.rcpt(ctx, rcpt)
                except RelayError as exc:
                    if exc.http_status != 422:
                        raise
                    suppressed[rcpt] = "suppressed"
        except RelayError as exc:
            await pipeline.abort(ctx)
            raise relay_error(exc) from None
        if not ctx.recipients:
            await pipeline.abort(ctx)
            await webhooks.service(gateway).emit(ident.account_id, "suppressed", (
                {"message_id": None, "recipient": a, "status": "suppressed", "tags": body.tags,
                 "metadata": body.metadata} for a in suppressed))
            raise ApiError(422, SUPPRESSED_MESSAGE, suppressed=True)
        ctx.extra[TAGS] = body.tags or None
        ctx.extra[METADATA] = body.metadata or None
        ctx.extra[SUPPRESSED] = suppressed
        queued = ctx.extra[QUEUED] = not sandbox and not pool_healthy(ctx.alias.ip_pool if ctx.alias else "")
        try:
            message_id = await pipeline.data(ctx, raw)
        except RelayError as exc:
            raise relay_error(exc) from None
        original = ctx.extra.get(IDEMPOTENT)
        if original is not None:
            return _replay(original)
        if suppressed:
            await webhooks.service(gateway).emit(ident.account_id, "suppressed", (
                {"message_id": message_id, "recipient": a, "status": "suppressed", "tags": body.tags,
                 "metadata": body.metadata} for a in suppressed))
        return _result(message_id, "sandbox" if sandbox else "smtp", queued, ctx.extra.get(ACCEPTED_AT) or utcnow(),
                       suppressed=list(suppressed) or None)

    return r
