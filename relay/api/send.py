"""``POST /api/v1/send``: the HTTP front door onto the one submission pipeline.

It translates only: JSON -> a :class:`relay.services.send.Submission` (attachments decoded, the
draft of the MIME message, the recipients) -> :meth:`relay.services.send.Sender.send` (sandbox rule,
idempotency, alias, the pipeline's policies, DKIM and durable commit, suppression, webhook events)
-> its outcome as HTTP. Answers as the seeds:

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
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from relay.api.common import (
    PREFIX,
    SUPPRESSED_MESSAGE,
    ApiError,
    Body,
    Tag,
    Text,
    errors,
    field_error,
    iso,
    line,
    refusals,
)
from relay.api.deps import SenderDep, SendKey
from relay.services.send import (
    MAX_BCC,
    MAX_CC,
    MAX_TO,
    Sent,
    Submission,
    unique_recipients,
)
from relay.submission.compose import (
    Attachment,
    ComposeError,
    Draft,
    Mailbox,
    check_address,
)
from relay.vocab import Forbidden, Invalid, RelayError

router = APIRouter(prefix=PREFIX, tags=["send"])
SEND_ERRORS = (Forbidden, Invalid, RelayError, ComposeError)


def _email(value: str) -> str:
    return check_address(value, "email")


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
    to: list[AddressIn] = Field(min_length=1, max_length=MAX_TO)
    cc: list[AddressIn] = Field(default_factory=list, max_length=MAX_CC)
    bcc: list[AddressIn] = Field(default_factory=list, max_length=MAX_BCC)
    reply_to: AddressIn | None = None
    subject: line(998)
    html: Text | None = None
    text: Text | None = None
    alias_id: line(100) | None = Field(default=None, description="The sending alias (ali_...): its address and pool")
    idempotency_key: line(128, 1) | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=10)
    metadata: dict[line(64, 1), line(1000)] = Field(default_factory=dict, max_length=50)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


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


def _answer(sent: Sent) -> JSONResponse:
    if sent.queued:
        body: dict[str, Any] = {"success": False, "queued": True, "message": "Email queued for retry",
                                "message_id": sent.message_id, "timestamp": iso(sent.timestamp)}
    else:
        body = {"success": True, "message_id": sent.message_id, "provider": sent.provider,
                "timestamp": iso(sent.timestamp)}
    if sent.idempotent:
        body["idempotent"] = True
    if sent.suppressed:
        body["suppressed_recipients"] = list(sent.suppressed)
    return JSONResponse(body, status_code=202 if sent.queued else 200)


def _attachments(items: list[AttachmentIn]) -> tuple[Attachment, ...]:
    out = []
    for i, a in enumerate(items):
        try:
            content = base64.b64decode(a.content, validate=True)
        except (binascii.Error, ValueError):
            raise field_error("attachments", f"{i}.content: not valid base64") from None
        out.append(Attachment(a.filename, content, a.content_type, a.content_id))
    return tuple(out)


def _mailbox(a: AddressIn) -> Mailbox:
    return Mailbox(a.email, a.name)


def submission(request: Request, body: SendRequest, ident: Any, sandbox_header: bool) -> Submission:
    """The JSON request as the send service takes it."""
    draft = Draft(sender=_mailbox(body.from_), to=tuple(map(_mailbox, body.to)), cc=tuple(map(_mailbox, body.cc)),
                  reply_to=_mailbox(body.reply_to) if body.reply_to else None, subject=body.subject,
                  text=body.text, html=body.html, attachments=_attachments(body.attachments))
    recipients = unique_recipients(*(tuple(a.email for a in group) for group in (body.to, body.cc, body.bcc)))
    return Submission(identity=ident, peer=request.client.host if request.client else "", draft=draft,
                      recipients=recipients, sandbox_requested=sandbox_header, alias_id=body.alias_id,
                      idempotency_key=body.idempotency_key, tags=tuple(body.tags), metadata=dict(body.metadata),
                      secure=request.url.scheme == "https")


@router.post("/send", response_model=None, summary="Send an email",
             responses={200: {"model": SendResult, "description": "Accepted: committed, handed to delivery"},
                        202: {"model": Queued, "description": "Queued for retry: the pool is down right now"},
                        **errors(409, 422, 429, 503)})
async def send(request: Request, body: SendRequest, ident: SendKey, sender: SenderDep,
               x_relay_sandbox: str | None = Header(default=None),
               x_misarmail_sandbox: str | None = Header(default=None)) -> JSONResponse:
    """Send one message through the same pipeline as SMTP (alias check, policies, DKIM, durable
    commit before the answer). ``X-Relay-Sandbox: true`` (or ``X-MisarMail-Sandbox``), or a key
    holding only the ``sandbox`` scope, stores the send without delivering it."""
    sandbox_header = _truthy(x_relay_sandbox) or _truthy(x_misarmail_sandbox)
    with refusals(catch=SEND_ERRORS):
        outcome = await sender.send(submission(request, body, ident, sandbox_header))
    if not isinstance(outcome, Sent):
        raise ApiError(422, SUPPRESSED_MESSAGE, suppressed=True)
    return _answer(outcome)
