"""SQLAlchemy 2 models: the store is the single source of truth (bodies included).

Ids are prefixed strings as in the seeds (``ali_...``, ``smtp_...``, ``msg_...``); recipients and
events use integer keys because they are only ever reached through their message.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    JSON,
    false as sa_false,
    text as sa_text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _ts() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = _ts()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the public prefix, rk_xxxxxxxx
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[str] = mapped_column(String(400), nullable=False)  # comma separated
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = _ts()
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Domain(Base):
    """An account's claim on a domain (0005): several accounts may claim one name, each with its own
    verification token and DKIM keys; the first claim verified owns the name (at most one verified
    claim per name, enforced by a partial unique index). Only the verified claim signs and carries aliases."""

    __tablename__ = "domains"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253), nullable=False, index=True)
    verification_token: Mapped[str] = mapped_column(String(80), nullable=False)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _ts()
    __table_args__ = (
        UniqueConstraint("account_id", "name", name="uq_domains_account_name"),
        Index("uq_domains_verified_name", "name", unique=True,
              sqlite_where=text("verified_at IS NOT NULL"), postgresql_where=text("verified_at IS NOT NULL")),
    )


class DkimKey(Base):
    __tablename__ = "dkim_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    selector: Mapped[str] = mapped_column(String(63), nullable=False)
    algorithm: Mapped[str] = mapped_column(String(16), nullable=False)  # rsa | ed25519
    private_key_enc: Mapped[str] = mapped_column(Text, nullable=False)  # AES-GCM under the master key
    public_txt: Mapped[str] = mapped_column(Text, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)  # signs new mail
    created_at: Mapped[dt.datetime] = _ts()
    # DKIM rotation (0003): pending (published, not signing yet) -> active -> retiring (published for the
    # grace period, not signing) -> deleted once retire_at has passed.
    status: Mapped[str] = mapped_column(String(12), nullable=False, default="active", server_default="active")
    retire_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("domain_id", "selector"),)


class IpPool(Base):
    """An IP pool: the upstreams that carry an alias's mail. ``account_id`` NULL: the operator's (open to
    every account unless ``restricted``; then only to the accounts in ``ip_pool_grants``); else that
    account's own, used by it alone (0004)."""

    __tablename__ = "ip_pools"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[dt.datetime] = _ts()
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    restricted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=sa_false())


class IpPoolGrant(Base):
    """An account allowed to use a restricted operator IP pool."""

    __tablename__ = "ip_pool_grants"
    ip_pool: Mapped[str] = mapped_column(ForeignKey("ip_pools.name", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = _ts()


class Upstream(Base):
    """An upstream relay (the seeds' "SMTP pool"), member of one IP pool."""

    __tablename__ = "upstreams"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    ip_pool: Mapped[str] = mapped_column(ForeignKey("ip_pools.name"), index=True)
    host: Mapped[str] = mapped_column(String(253), nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    username: Mapped[str | None] = mapped_column(String(400))
    password_enc: Mapped[str | None] = mapped_column(Text)
    encryption: Mapped[str] = mapped_column(String(8), nullable=False)  # tls | ssl | none
    verify_tls: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    weight: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    max_connections: Mapped[int | None] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[dt.datetime] = _ts()


class Alias(Base):
    __tablename__ = "aliases"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)  # lower case
    name: Mapped[str | None] = mapped_column(String(200))
    ip_pool: Mapped[str] = mapped_column(ForeignKey("ip_pools.name"), nullable=False)
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    verification_token: Mapped[str | None] = mapped_column(String(80), index=True)
    # when the token was issued (0005): the link expires aliases.verify_link_ttl later
    verification_sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _ts()


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # queue id, msg_...
    account_id: Mapped[str | None] = mapped_column(String(40), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    alias_id: Mapped[str | None] = mapped_column(String(40), index=True)
    ip_pool: Mapped[str] = mapped_column(String(100), nullable=False, index=True)  # a pool's parked mail (0006)
    upstream_id: Mapped[str | None] = mapped_column(String(40))  # the one upstream chosen for it (0006; HTTP alias_id)
    mail_from: Mapped[str] = mapped_column(String(320), nullable=False)  # "" = null sender (DSN)
    header_message_id: Mapped[str | None] = mapped_column(String(400))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # signed, CRLF, as delivered
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # smtp | api | system | dsn
    sandbox: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))  # unused: see IdempotencyRecord (24 h)
    tags: Mapped[list | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = _ts()
    expires_at: Mapped[dt.datetime] = _ts()
    __table_args__ = (UniqueConstraint("account_id", "idempotency_key", name="uq_messages_idempotency"),)


class Recipient(Base):
    """Per-recipient delivery state: queued, deferred, delivering, delivered, bounced, suppressed, expired."""

    __tablename__ = "recipients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = _ts()
    lease_owner: Mapped[str | None] = mapped_column(String(80), index=True)  # lease renewal and recovery (0006)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Set (and committed) just before the final "." goes to the upstream: if the process dies after
    # that, the upstream may have the message, so recovery must not send it again.
    dot_sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    upstream: Mapped[str | None] = mapped_column(String(200))
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_reply: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = _ts()
    __table_args__ = (
        Index("ix_recipients_due", "state", "next_attempt_at"),
        # the claim's scan (0006): only what may become due, in due order, whatever the final rows
        Index("ix_recipients_pending_due", "next_attempt_at", postgresql_where=sa_text("state IN ('queued', 'deferred')"),
              sqlite_where=sa_text("state IN ('queued', 'deferred')")),
        Index("ix_recipients_message_address", "message_id", "address"),  # the per-recipient updates (0006)
    )


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    recipient: Mapped[str | None] = mapped_column(String(320))
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)  # retention (0006)
    upstream: Mapped[str | None] = mapped_column(String(200))
    code: Mapped[int | None] = mapped_column(Integer)
    reply: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """An account's suppressed address. The table is the suppression policy's: every query on it is
    in policies.suppression_store (the core reaches it through policies.spec.SuppressionBook); it is
    declared here because the core migrations (0001, 0002) create it, as the quota tables below."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False)
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    reason: Mapped[str] = mapped_column(String(20), nullable=False)  # hard_bounce|complaint|unsubscribe|manual
    detail: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _ts()
    __table_args__ = (UniqueConstraint("account_id", "address", name="uq_suppressions_address"),)


# -- policies (migration 0002) -----------------------------------------------------------------------
# A case-insensitive lookup of one account's suppression list (the policy asks once per RCPT).
Index("ix_suppressions_account_lower", Suppression.account_id, func.lower(Suppression.address))


class QuotaLimit(Base):
    """A quota on one target: ``account:<id>``, ``key:<id>``, ``alias:<id>``, ``pool:<name>`` or
    ``account_pool:<account id>/<pool>``. NULL fields inherit the ``[policies.quota]`` defaults;
    -1 means unlimited. ``warmup`` is ``[[day, daily cap], ...]`` (pools only)."""

    __tablename__ = "quota_limits"
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(320), nullable=False)  # key id, alias email, pool name...
    ip_pool: Mapped[str | None] = mapped_column(String(100))
    rate_count: Mapped[int | None] = mapped_column(Integer)
    rate_per: Mapped[int | None] = mapped_column(Integer)  # seconds: 1, 60 or 3600
    daily: Mapped[int | None] = mapped_column(Integer)
    warmup: Mapped[list | None] = mapped_column(JSON)
    warmup_start: Mapped[dt.date | None] = mapped_column(Date)  # default: the pool's creation day
    updated_at: Mapped[dt.datetime] = _ts()


class QuotaUsage(Base):
    """Units (recipients) counted against a target on one UTC day."""

    __tablename__ = "quota_usage"
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, nullable=False)


class QuotaBucket(Base):
    """A target's token bucket for its rate: tokens left at ``refilled_at`` (epoch seconds)."""

    __tablename__ = "quota_buckets"
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, nullable=False)
    refilled_at: Mapped[float] = mapped_column(Float, nullable=False)


# -- HTTP API (migration 0003) ------------------------------------------------------------------------
# Message tracking pages through one account's messages, newest first.
Index("ix_messages_account_created", Message.account_id, Message.created_at)


class IdempotencyRecord(Base):
    """One account's idempotency key (HTTP ``idempotency_key``, SMTP ``Idempotency-Key:``) for 24 hours.

    Inserted just before the message's commit: the primary key lets exactly one of concurrent
    duplicates (on any node) own the send. ``message_id`` is committed in ``messages`` once the
    owner's commit succeeded; the owner deletes the row when its commit fails."""

    __tablename__ = "idempotency_keys"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(40), nullable=False)
    provider: Mapped[str] = mapped_column(String(16), nullable=False)  # smtp | sandbox
    queued: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # answered 202
    created_at: Mapped[dt.datetime] = _ts()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class Webhook(Base):
    """An account's webhook endpoint; the signing secret is encrypted under the master key."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # whk_...
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    events: Mapped[list] = mapped_column(JSON, nullable=False)
    secret_enc: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[dt.datetime] = _ts()


class WebhookDelivery(Base):
    """One event for one webhook: pending until the endpoint answers 2xx, retried with backoff."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40), nullable=False)  # evt_...
    event_type: Mapped[str] = mapped_column(String(16), nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)  # the JSON body, exactly as signed and sent
    state: Mapped[str] = mapped_column(String(12), nullable=False)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = _ts()
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _ts()
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)


class User(Base):
    """A person who logs in to the dashboard (0007): one account, a role (owner | admin | member), an
    argon2 password hash (NULL until set through a one-time link)."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # usr_...
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False)  # lower-cased
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = _ts()
    __table_args__ = (UniqueConstraint("email", name="uq_users_email"),)


class UserSession(Base):
    """A logged-in session: the SHA-256 of the ``sb-access-token`` cookie, never the token itself."""

    __tablename__ = "user_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = _ts()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class PasswordLink(Base):
    """A one-time set-password link (its token's SHA-256), consumed when the password is set."""

    __tablename__ = "password_links"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
