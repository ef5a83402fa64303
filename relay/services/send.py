"""One HTTP send, end to end: what ``POST /api/v1/send`` decides, so the route only translates.

:meth:`Sender.send` takes a typed :class:`Submission` and answers :class:`Sent` or
:class:`Suppressed`, or raises the refusal (:class:`relay.vocab.RelayError` from the pipeline or a
policy, SANDBOX_DENIED included; :class:`relay.vocab.Invalid` for the request;
:class:`relay.submission.compose.ComposeError` for a value that cannot go into the message).

The rules it holds: who may send to the sandbox; an idempotency key replays the original answer;
``alias_id`` must be an alias of the account; a recipient refused as suppressed is held back by the
pipeline (stored and reported as on SMTP) while the others get the message; a send whose alias's IP
pool has no healthy upstream right now is committed all the same, answered as queued.

What the send adds to the submission (tags, metadata, the held-back recipients, the envelope cap)
travels in the typed :class:`relay.vocab.Context` the pipeline stores from, the same for both
front doors; the pipeline knows no HTTP.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from relay.delivery.router import Router
from relay.submission.compose import Draft, compose
from relay.submission.idempotency import Original
from relay.submission.pipeline import API_MAX_RECIPIENTS, Outcome, Pipeline, idempotency_scope, sandboxed
from relay.vocab import Context, Identity, Invalid, NotFound

# The pipeline's limit for one HTTP send, split as the seeds' request does: to, cc, bcc.
MAX_TO = API_MAX_RECIPIENTS // 2
MAX_CC = MAX_BCC = API_MAX_RECIPIENTS // 4


@dataclass(frozen=True)
class Submission:
    """An HTTP send, already translated from JSON (attachments decoded, addresses checked)."""

    identity: Identity
    peer: str
    draft: Draft
    recipients: tuple[str, ...]  # to + cc + bcc, each once
    sandbox_requested: bool = False  # the X-Relay-Sandbox header
    secure: bool = False  # came over HTTPS (the Received: field says so)
    alias_id: str | None = None
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    """Committed (or the original answer of a replayed idempotency key)."""

    message_id: str
    provider: str  # "smtp" or "sandbox"
    queued: bool  # no healthy upstream in the pool right now: committed, delivered later
    timestamp: dt.datetime
    idempotent: bool = False
    suppressed: tuple[str, ...] = ()  # recipients held back, the others got the message


@dataclass(frozen=True)
class Suppressed:
    """Every recipient is suppressed: nothing was stored."""

    recipients: tuple[str, ...]


def unique_recipients(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses of every group, each once (case-insensitively), in order."""
    seen: set[str] = set()
    out: list[str] = []
    for address in (a for g in groups for a in g):
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return tuple(out)


def _replayed(original: Original) -> Sent:
    return Sent(original.message_id, original.provider, original.queued, original.timestamp, idempotent=True)


def _sent(out: Outcome) -> Sent:
    if out.replayed is not None:
        return _replayed(out.replayed)
    return Sent(out.message_id, "sandbox" if out.sandbox else "smtp", out.queued, out.accepted_at,
                suppressed=out.suppressed)


class Sender:
    def __init__(self, pipeline: Pipeline, router: Router) -> None:
        self.pipeline = pipeline
        self.router = router

    def pool_healthy(self, pool: str) -> bool:
        return any(self.router.healthy(u) for u in self.router.ip_pools.get(pool, ()))

    async def send(self, sub: Submission) -> Sent | Suppressed:
        ident = sub.identity
        sandbox = sandboxed(ident, sub.sandbox_requested)
        if sub.draft.html is None and sub.draft.text is None:
            raise Invalid("html or text is required", "html")
        if sub.idempotency_key:
            key = idempotency_scope(sub.idempotency_key, sandbox)
            original = await self.pipeline.idempotency.lookup(ident.account_id, key) if key else None
            if original is not None:
                return _replayed(original)
        sender, route, pinned = await self._route(sub)
        ctx = Context(listener="api", peer=sub.peer, identity=ident, sandbox=sandbox, tls=sub.secure,
                      idempotency_key=sub.idempotency_key, source="api",
                      max_recipients=max(self.pipeline.max_recipients, API_MAX_RECIPIENTS))
        alias = await self.pipeline.mail(ctx, sender, ip_pool=route, upstream_id=pinned)
        draft = sub.draft
        if draft.sender.name is None and alias.name:  # the alias's display name, as the SMTP door keeps From
            draft = replace(draft, sender=replace(draft.sender, name=alias.name))
        try:
            raw = compose(draft)
        except Exception:
            await self.pipeline.abort(ctx)
            raise
        ctx.tags = list(sub.tags) or None
        ctx.metadata = sub.metadata or None
        await self.pipeline.recipients(ctx, sub.recipients)
        if not ctx.recipients:
            await self.pipeline.abort(ctx)  # reports the held-back recipients
            return Suppressed(tuple(ctx.held_back))
        ctx.expect_delay = not sandbox and not self.pool_healthy(ctx.ip_pool or "")
        return _sent(await self.pipeline.data(ctx, raw))

    async def _route(self, sub: Submission) -> tuple[str, str | None, str | None]:
        """The envelope sender, the IP pool chosen instead of the alias's and the one upstream chosen
        (None: the alias's pool, any of its upstreams in order).

        ``alias_id`` names an alias of the account (its address is the sender), or, as seed 001 does,
        an SMTP pool (``smtp_...``: an upstream the account may use): the message goes through that
        upstream alone, from the From address."""
        if not sub.alias_id:
            return sub.draft.sender.email, None, None
        if sub.alias_id.startswith("smtp_"):
            return sub.draft.sender.email, await self._upstream_pool(sub), sub.alias_id
        try:
            alias = await self.pipeline.runner.read(self.pipeline.store.directory.get_alias, sub.alias_id)
        except NotFound:
            alias = None
        if alias is None or alias.id != sub.alias_id or alias.account_id != sub.identity.account_id:
            raise Invalid("Unknown alias", "alias_id")
        return alias.email, None, None

    async def _upstream_pool(self, sub: Submission) -> str:
        """The IP pool of upstream ``sub.alias_id``, when the account may use it (its own upstream, or
        one in an operator pool open or granted to it); else the same answer as an unknown alias."""
        store = self.pipeline.store
        try:
            up = await self.pipeline.runner.read(store.directory.get_upstream, sub.alias_id)
        except NotFound:
            raise Invalid("Unknown alias", "alias_id") from None
        pool = await self.pipeline.runner.read(store.ip_pools.get, up.ip_pool)
        if up.id != sub.alias_id or not up.is_active or pool is None or not pool.allows(sub.identity.account_id):
            raise Invalid("Unknown alias", "alias_id")
        return up.ip_pool
