"""The shared vocabulary: the words every layer uses, with no I/O (the lowest layer).

- identity and context: who submits (:class:`Identity`) and one transaction (:class:`Context`);
- scopes and IP pools: :data:`SEND_SCOPES`, :data:`READ_SCOPE`, :data:`POOL_SCOPES`, :data:`DEFAULT_IP_POOL`,
  :data:`OPERATOR_POOLS`;
- ids: :func:`new_id`, :func:`new_queue_id`; time: :func:`utcnow`;
- queue states: :data:`STATES`, :data:`PENDING`, :data:`FINAL`;
- one error family (aiosmtplib's model: the SMTP code rides on the exception).

Every refusal carries an SMTP code, an enhanced status code, a public message (safe to show a
client) and an internal reason (for logs only). ``temporary`` is derived from the code: 4xx.
Only the front doors turn these into wire text (SMTP) or an HTTP status.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.store.directory import AliasRec

SEND_SCOPES = frozenset({"send", "send:transactional", "send:marketing"})
POOL_SCOPES = {"send:transactional": "transactional", "send:marketing": "marketing"}
DEFAULT_IP_POOL = "default"
OPERATOR_POOLS = frozenset({DEFAULT_IP_POOL, *POOL_SCOPES.values()})
"""IP pool names only the operator may own: system mail (DSNs, verification) goes through
``default``, and the ``send:transactional|marketing`` scopes name the other two."""

READ_SCOPE = "read"
"""A dashboard member's only scope: every read (GET) of its account's objects, no change at all. Never
a key's: only a session of a ``member`` user holds it (relay.services.users.ROLE_SCOPES)."""

STATES = ("queued", "deferred", "delivering", "delivered", "bounced", "suppressed", "expired", "sandbox")
PENDING = ("queued", "deferred", "delivering")
FINAL = ("delivered", "bounced", "suppressed", "expired", "sandbox")  # sandbox: stored, never delivered


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_queue_id(sandbox: bool = False) -> str:
    return ("sandbox_msg_" if sandbox else "msg_") + secrets.token_hex(8)


@dataclass(frozen=True)
class Identity:
    """Who submits: an account, through one API key (None for a trusted network), with its scopes."""

    account_id: str
    account_name: str
    key_id: str | None  # None for trusted networks
    scopes: frozenset[str]

    @property
    def operator(self) -> bool:
        """The gateway's administrator (an ``operator`` key, made only by the CLI), not one account's."""
        return "operator" in self.scopes

    def permits(self, needed: frozenset[str], *, change: bool) -> bool:
        """May this identity use a route that needs one of ``needed`` (nothing: any identity)?
        ``change``: the request changes state (POST, PUT, PATCH, DELETE). :data:`READ_SCOPE` (a dashboard
        member) passes every read except the operator's own and no change at all."""
        if READ_SCOPE in self.scopes:
            return not change and (not needed or bool(needed - {"operator"}))
        return not needed or bool(self.scopes & needed)


@dataclass
class Context:
    """One transaction as policies and the pipeline see it (the same for SMTP and HTTP)."""

    listener: str
    peer: str = ""
    identity: Identity | None = None
    alias: "AliasRec | None" = None
    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    sandbox: bool = False
    idempotency_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # what a front door adds to the submission (stored with the message)
    source: str = "smtp"  # the kind of front door: "smtp" or "api"
    smtputf8: bool = False  # MAIL FROM ... SMTPUTF8: non-ASCII addresses allowed (RFC 6531)
    route_pool: str | None = None  # the IP pool chosen for this message instead of the alias's (HTTP alias_id = smtp_...)
    route_upstream: str | None = None  # the one upstream of route_pool chosen for it (the same alias_id)
    helo: str | None = None  # the client's EHLO/HELO name (the Received: field)
    tls: bool = False  # the submission came over TLS (ESMTPS, HTTPS)
    max_recipients: int | None = None  # this transaction's envelope cap (None: the gateway's smtp.max_recipients)
    tags: list[str] | None = None
    metadata: dict[str, str] | None = None
    held_back: dict[str, str] = field(default_factory=dict)  # recipient -> state, stored but never delivered
    expect_delay: bool = False  # no healthy upstream right now: the answer says "queued"
    # what the pipeline answers besides the queue id
    accepted_at: dt.datetime | None = None  # the idempotency key's first acceptance
    replayed: Any = None  # the original submission of a repeated idempotency key (nothing committed)

    @property
    def ip_pool(self) -> str | None:
        """The IP pool of this message: the sender's alias's, unless the submission chose another
        (``route_pool``); None before MAIL."""
        return self.route_pool or (self.alias.ip_pool if self.alias else None)

    @property
    def pool(self) -> str | None:
        """The former name of :attr:`ip_pool`, kept for third-party policies."""
        return self.ip_pool


class RelayError(Exception):
    """A refusal with everything a front door needs to answer it."""

    def __init__(
        self,
        code: int,
        enhanced: str,
        public: str,
        reason: str = "",
        *,
        http_status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(reason or public)
        self.code = code
        self.enhanced = enhanced
        self.public = public
        self.reason = reason or public
        self.http_status = http_status
        self.field = field

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def smtp_reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.public}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.enhanced!r}, {self.public!r}, reason={self.reason!r})"


class ConfigError(Exception):
    """Bad configuration: the message names the key and the value."""


class StoreError(RelayError):
    """The store failed; the client must retry later, never get a 250."""

    def __init__(self, reason: str) -> None:
        super().__init__(451, "4.3.0", "Temporary local problem, try again later", reason, http_status=503)


class NotFound(LookupError):
    """An admin lookup found nothing (CLI exit 1, HTTP 404)."""


class Expired(LookupError):
    """A link or token that existed but is past its lifetime (HTTP 410), e.g. an old verification link."""


class Unavailable(RuntimeError):
    """A service the operation needs did not answer (a DNS resolver timed out): nothing was decided,
    try again (CLI exit 1, HTTP 503)."""


class NotEnabled(RuntimeError):
    """The configuration turned off what the operation needs, e.g. no enabled policy provides the
    suppression list: nothing was done, and asking again will not help (CLI exit 1, HTTP 501)."""


class Conflict(ValueError):
    """An admin change collides with existing state (CLI exit 1, HTTP 409)."""


class Forbidden(PermissionError):
    """An admin change the rules refuse whatever the input (HTTP 403), e.g. removing the last verified alias."""


class Invalid(ValueError):
    """An admin request is malformed (CLI exit 2, HTTP 400); ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
