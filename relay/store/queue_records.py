"""The records the durable queue takes and gives (relay.store.queue): a new message, a message due
for an attempt, an attempt's outcome, and the views of stored messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from relay.vocab import STATES

@dataclass
class NewMessage:
    id: str
    ip_pool: str
    mail_from: str
    body: bytes = field(repr=False)
    recipients: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    account_id: str | None = None
    api_key_id: str | None = None
    alias_id: str | None = None
    header_message_id: str | None = None
    subject: str | None = None
    source: str = "smtp"
    sandbox: bool = False
    idempotency_key: str | None = None
    tags: list[str] | None = None
    meta: dict | None = None
    lease_owner: str | None = None  # the accepting node makes the first attempt itself
    lease_until: dt.datetime | None = None
    suppressed: dict[str, str] = field(default_factory=dict)  # address -> reason: stored, never sent
    upstream_id: str | None = None  # the one upstream of ip_pool chosen for it (None: any, in order)


@dataclass
class Outcome:
    """One recipient's result after an attempt. ``state`` is one of STATES."""

    message_id: str
    address: str
    state: str
    code: int | None = None
    reply: str | None = None
    upstream: str | None = None
    next_attempt_at: dt.datetime | None = None  # deferred only
    attempted: bool = True


@dataclass
class QueuedMessage:
    """A message as the delivery side needs it: envelope, body and the recipients still to do."""

    id: str
    ip_pool: str
    mail_from: str
    body: bytes = field(repr=False)
    recipients: list[str]
    account_id: str | None
    expires_at: dt.datetime
    created_at: dt.datetime
    source: str
    tries: dict[str, int] = field(default_factory=dict)  # recipient -> attempts so far (absent: 0)
    upstream_id: str | None = None  # only this upstream may carry it (HTTP alias_id naming an SMTP pool)

    @property
    def attempts(self) -> int:
        return max(self.tries.values(), default=0)


@dataclass(frozen=True)
class RecipientView:
    address: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime | None
    upstream: str | None
    last_code: int | None
    last_reply: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class EventView:
    type: str
    at: dt.datetime
    recipient: str | None
    upstream: str | None
    code: int | None
    reply: str | None


@dataclass(frozen=True)
class MessageView:
    id: str
    account_id: str | None
    alias_id: str | None
    ip_pool: str
    mail_from: str
    header_message_id: str | None
    subject: str | None
    size: int
    source: str
    sandbox: bool
    created_at: dt.datetime
    expires_at: dt.datetime
    recipients: tuple[RecipientView, ...] = ()
    events: tuple[EventView, ...] = ()

    @property
    def state(self) -> str:
        """The least-advanced recipient state, for listings (each recipient keeps its own)."""
        order = {s: i for i, s in enumerate(STATES)}
        return min((r.state for r in self.recipients), key=order.__getitem__, default="queued")
