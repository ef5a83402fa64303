"""The one submission pipeline behind both front doors (SMTP and HTTP).

identity (API key) -> sender (verified alias -> IP pool, scope check) -> recipients (policies)
-> data (header checks, policies, Message-ID/Date, DKIM) -> durable commit -> active queue.

The front doors only translate: they call these methods and turn the :class:`RelayError` they may
raise into an SMTP reply or an HTTP status. Nothing here knows about sockets or wire syntax.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from policies.spec import SIZE, Verdict
from relay.submission import message as msgs
from relay.ops import metrics
from relay.ops.config import Settings
from relay.ops.config.schema import ScopesSettings
from relay.cache import TTLCache
from relay.submission.dkim import DkimKey, SignerCache
from relay.vocab import (DEFAULT_IP_POOL, SEND_SCOPES, Context, Identity, RelayError, StoreError,
                         new_queue_id)
from relay.submission.idempotency import Idempotency
from relay.submission.policyset import PolicySet
from relay.secrets import MasterKey, parse_api_key, verify_api_key
from relay.store import Store, utcnow
from relay.store.directory import AliasRec, DomainRec
from relay.store.records import PoolRec
from relay.store.idempotency import IdempotencyStore
from relay.store.queue import NewMessage, QueuedMessage
from relay.store.runner import DbRunner, StoreWriter
from relay.throttle import AuthThrottle, ConnectionLimits, MemoryBudget

log = logging.getLogger(__name__)


AUTH_FAILED = RelayError(535, "5.7.8", "Authentication credentials invalid", http_status=401)
AUTH_REQUIRED = RelayError(530, "5.7.0", "Authentication required", http_status=401)
KEY_REVOKED = RelayError(530, "5.7.0", "Authentication required (the key was revoked)", http_status=401)
RELAY_DENIED = RelayError(554, "5.7.1", "Relay access denied", http_status=403)
SENDER_DENIED = RelayError(553, "5.7.1", "Sender address not allowed for this login", http_status=403)
FROM_DENIED = RelayError(550, "5.7.1", "From header not allowed for this login", http_status=403)
SCOPE_DENIED = RelayError(550, "5.7.1", "This key may not send through that sender's pool", http_status=403)
SANDBOX_DENIED = RelayError(550, "5.7.1", "Sandbox sends need an API key with the sandbox scope", http_status=403)
SANDBOX_SCOPE = "sandbox"
SMTP_SCOPES = SEND_SCOPES | {SANDBOX_SCOPE}  # the keys SMTP AUTH takes (a sandbox-only key sends to the sandbox)
POOL_DENIED = RelayError(550, "5.7.1", "This account may not send through that sender's IP pool", http_status=403)
BARE_NEWLINE = RelayError(550, "5.6.11", "Bare CR or LF in message data refused", http_status=400)
TOO_MANY_RECIPIENTS = RelayError(452, "4.5.3", "Too many recipients", http_status=400)
_OPEN = "_transaction_open"  # ctx.extra: MAIL accepted, neither committed nor aborted yet
API_MAX_RECIPIENTS = 200  # one HTTP send's envelope: to 100 + cc 50 + bcc 50


SUPPRESSION_STATUS = 422  # policies.spec: the http_status of a Verdict refusing a suppressed recipient


def verdict_error(v: Verdict) -> RelayError:
    return RelayError(v.code, v.enhanced, v.message, v.reason, http_status=v.http_status)


def is_suppression(exc: RelayError) -> bool:
    return exc.http_status == SUPPRESSION_STATUS


@dataclass(frozen=True)
class Outcome:
    """What a submission came to, the same for both front doors (each only translates it).

    ``message_id`` is the queue id (the original's when ``replayed``); ``suppressed`` the recipients
    refused as suppressed (SMTP answered them 550 at RCPT, HTTP held them back), stored with the
    message in state ``suppressed`` and reported as ``suppressed`` webhook events."""

    message_id: str
    sandbox: bool
    accepted_at: dt.datetime
    suppressed: tuple[str, ...] = ()
    queued: bool = False  # no healthy upstream when it was accepted: delivered later
    replayed: Any = None  # the original answer of a repeated idempotency key (nothing committed)


SuppressedHook = Callable[[Context, "str | None"], Awaitable[None]]


async def _no_report(_ctx: Context, _message_id: str | None) -> None:
    return None


BAD_RECIPIENT = RelayError(501, "5.1.3", "Bad recipient address syntax", http_status=400)
NEEDS_SMTPUTF8 = RelayError(553, "5.6.7", "Non-ASCII address requires SMTPUTF8", http_status=400)


def check_recipient(address: str, smtputf8: bool) -> None:
    """Refused at RCPT, not discovered at delivery: control characters, blanks, no or several ``@``,
    an empty part (501 5.1.3), a non-ASCII address without SMTPUTF8 (553 5.6.7)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in domain or any(c <= " " or c == "\x7f" for c in address):
        raise BAD_RECIPIENT
    if not address.isascii() and not smtputf8:
        raise NEEDS_SMTPUTF8


def sandboxed(ident: Identity, requested: bool) -> bool:
    """Whether a submission goes to the sandbox (stored, never delivered): asked for (the
    X-Relay-Sandbox header, in HTTP or in the message), or a key without a send scope. Asking needs
    the sandbox scope (SANDBOX_DENIED). The one rule for both front doors."""
    sandbox = requested or not ident.scopes & SEND_SCOPES
    if sandbox and SANDBOX_SCOPE not in ident.scopes:
        raise SANDBOX_DENIED
    return sandbox


def idempotency_scope(key: str | None, sandbox: bool) -> str | None:
    """An idempotency key is the account's, and a sandbox send's apart from a real one's: a sandbox
    test never answers for (and swallows) the real send that reuses its key."""
    return None if not key else ("sandbox:" + key if sandbox else key)


def may_use_pool(scopes: frozenset[str], pool: str, scope_pools: Mapping[str, frozenset[str]]) -> bool:
    """``send`` (and ``admin``) may use any pool; ``send:transactional`` / ``send:marketing`` only the
    pools ``[scopes]`` gives them."""
    if scopes & {"send", "admin"}:
        return True
    return any(pool in scope_pools.get(s, ()) for s in scopes)


class Pipeline:
    def __init__(self, *, store: Store, runner: DbRunner, master_key: MasterKey, hostname: str,
                 lease_seconds: float, max_age: float, policies: PolicySet | None = None,
                 trusted: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] | None = None,
                 cache_ttl: float = 5.0, clock: Callable[[], dt.datetime] = utcnow, max_recipients: int = 100,
                 auth_throttle: AuthThrottle | None = None, connections: ConnectionLimits | None = None,
                 data_budget: MemoryBudget | None = None, writer: StoreWriter | None = None,
                 hide_client_address: bool = False,
                 scope_pools: Mapping[str, frozenset[str]] | None = None, system_pool: str | None = None,
                 on_queued: Callable[[QueuedMessage], None] = lambda _m: None,
                 on_suppressed: SuppressedHook = _no_report) -> None:
        self.store = store
        self.runner = runner
        self.master_key = master_key
        self.hostname = hostname
        self.lease_seconds = lease_seconds
        self.max_age = max_age
        self.policies = policies or PolicySet()
        self.trusted = tuple(trusted or ())
        self.clock = clock
        self.max_recipients = max_recipients
        self.hide_client_address = hide_client_address  # Received: without the client's name and address
        self.scope_pools = scope_pools if scope_pools is not None else ScopesSettings().pools()  # [scopes]
        self.system_pool = system_pool  # [system] ip_pool: every system mail's pool (None: the caller's choice)
        self.auth_throttle = auth_throttle or AuthThrottle(5, 900)
        self.connections = connections or ConnectionLimits(1000, 50)
        self.data_budget = data_budget or MemoryBudget(256 << 20)  # bytes DATA transfers in flight may hold
        self.signers = SignerCache()
        self._signer_of: dict[str, tuple[DomainRec, Any]] = {}
        self._keys: TTLCache[Any] = TTLCache(cache_ttl)
        self._aliases: TTLCache[AliasRec | None] = TTLCache(cache_ttl)
        self._domains: TTLCache[DomainRec | None] = TTLCache(cache_ttl)
        self._accounts: TTLCache[Identity] = TTLCache(cache_ttl)
        self._pools: TTLCache[PoolRec | None] = TTLCache(cache_ttl)
        # shared with the scheduler: one fsync per round
        self.writer = writer or StoreWriter(runner, store.queue.apply, on_commit=metrics.store_committed)
        self.on_queued = on_queued  # the active queue's push
        self.on_suppressed = on_suppressed  # the events stage: the ``suppressed`` webhook events
        self.idempotency = Idempotency(runner, IdempotencyStore(store.sessions, store.reads), clock=clock)
        self._aborting: set[asyncio.Task[None]] = set()  # on_abort hooks started by abandon()

    def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        if self._aborting:
            await asyncio.gather(*self._aborting, return_exceptions=True)
        await self.writer.close()

    # -- identity -------------------------------------------------------------------------
    async def authenticate(self, username: str, key: str, *, scopes: frozenset[str] = SEND_SCOPES) -> Identity:
        """An API key, as SMTP password (user ``apikey`` or the account name) or Bearer token."""
        key_id = parse_api_key(key)
        if key_id is None:
            raise AUTH_FAILED
        rec = await self._keys.get(key_id, lambda: self.runner.read(self.store.directory.find_api_key, key_id))
        if rec is None or rec.revoked or not verify_api_key(key, rec.key_hash):
            raise AUTH_FAILED
        if username not in ("apikey", rec.account_name, ""):
            raise AUTH_FAILED
        if scopes and not (rec.scopes & scopes):
            raise AUTH_FAILED
        return Identity(rec.account_id, rec.account_name, rec.id, rec.scopes)

    async def _key_valid(self, key_id: str) -> bool:
        rec = await self._keys.get(key_id, lambda: self.runner.read(self.store.directory.find_api_key, key_id))
        return rec is not None and not rec.revoked

    async def trusted_identity(self, peer_ip: str) -> Identity | None:
        """The account a trusted network submits as (the plain `relay` listener), or None."""
        account = _trusted_account(peer_ip, self.trusted)
        if account is None:
            return None
        return await self._accounts.get(("name", account), lambda: self._load_account(account))

    async def _load_account(self, name: str) -> Identity:
        acc = await self.runner.read(self.store.directory.get_account, name)
        return Identity(acc.id, acc.name, None, frozenset({"send"}))

    def apply(self, settings: Settings) -> None:
        """A reload: trusted networks, recipient and connection limits, the DATA budget, AUTH throttling, max_age."""
        smtp = settings.smtp
        trusted = tuple((t.network, t.account) for t in smtp.trusted)
        if trusted != self.trusted:
            self.trusted = trusted
            self.invalidate()
        self.max_recipients = smtp.max_recipients
        self.hide_client_address = smtp.hide_client_address
        self.scope_pools = settings.scopes.pools()
        self.system_pool = settings.system.ip_pool
        self.connections.max_total, self.connections.max_per_ip = smtp.max_connections, smtp.max_connections_per_ip
        self.data_budget.total = smtp.data_memory_budget  # reservations in flight keep their bytes
        self.max_age = settings.delivery.max_age
        self.auth_throttle.apply(smtp.auth_max_failures, smtp.auth_lockout)

    def invalidate(self) -> None:
        for c in (self._keys, self._aliases, self._domains, self._accounts, self._pools):
            c.invalidate()
        self.signers.invalidate()
        self._signer_of.clear()

    # -- sender and recipients ------------------------------------------------------------
    async def _alias(self, address: str) -> AliasRec | None:
        address = address.lower()
        return await self._aliases.get(address, lambda: self.runner.read(self.store.directory.find_alias, address))

    async def _owned_domain(self, domain: str) -> DomainRec | None:
        """The verified claim on ``domain`` (its owner's); another account's unverified claim never counts."""
        domain = domain.lower()
        return await self._domains.get(domain, lambda: self.runner.read(self.store.directory.find_domain, domain))

    async def _own_verified_alias(self, ident: Identity, address: str) -> AliasRec | None:
        """A verified alias of the account, on a domain the account owns (its verified claim)."""
        alias = await self._alias(address)
        if alias is None or alias.account_id != ident.account_id or not alias.verified:
            return None
        dom = await self._owned_domain(alias.email.rpartition("@")[2])
        if dom is None or dom.account_id != ident.account_id:
            return None
        return alias

    async def _pool_allows(self, pool: str, account_id: str) -> bool:
        """Another account's IP pool never; a restricted operator pool only when granted. A pool not
        in the store yet is an open operator pool."""
        rec = await self._pools.get(pool, lambda: self.runner.read(self.store.ip_pools.get, pool))
        return rec is None or rec.allows(account_id)

    async def mail(self, ctx: Context, sender: str, *, ip_pool: str | None = None,
                   upstream_id: str | None = None) -> AliasRec:
        """MAIL FROM: the sender must be a verified alias of the account; it picks the pool (unless
        ``ip_pool``, which the account must be allowed to use as well)."""
        ident = ctx.identity
        if ident is None:
            raise AUTH_REQUIRED
        if ident.key_id is not None and not await self._key_valid(ident.key_id):
            raise KEY_REVOKED  # a session opened before the key was revoked (seen within cache_ttl)
        alias = await self._own_verified_alias(ident, sender)
        if alias is None:
            raise SENDER_DENIED
        ctx.sandbox = ctx.sandbox or sandboxed(ident, False)  # a key with only the sandbox scope
        pool = ip_pool or alias.ip_pool
        if not ctx.sandbox and not may_use_pool(ident.scopes, pool, self.scope_pools):  # a sandbox send goes nowhere
            raise SCOPE_DENIED
        if not ctx.sandbox and not await self._pool_allows(pool, ident.account_id):
            raise POOL_DENIED  # restricted since the alias chose it, or a grant revoked (seen within cache_ttl)
        ctx.alias, ctx.mail_from, ctx.recipients, ctx.route_pool = alias, sender, [], ip_pool
        ctx.route_upstream = upstream_id
        ctx.extra[_OPEN] = True
        verdict = await self.policies.run("on_mail", ctx, sender)
        if verdict:
            await self.abort(ctx)
            raise verdict_error(verdict)
        return alias

    async def rcpt(self, ctx: Context, recipient: str) -> None:
        """One recipient; a refusal applies to it alone. A suppressed one is refused too, and held
        back: stored with the message (state ``suppressed``) and reported, whichever door asked."""
        check_recipient(recipient, ctx.smtputf8)
        if len(ctx.recipients) >= (ctx.max_recipients or self.max_recipients):
            raise TOO_MANY_RECIPIENTS
        verdict = await self.policies.run("on_rcpt", ctx, recipient)
        if verdict:
            exc = verdict_error(verdict)
            if is_suppression(exc) and recipient not in ctx.recipients:
                ctx.held_back.setdefault(recipient, "suppressed")
            raise exc
        ctx.recipients.append(recipient)

    async def recipients(self, ctx: Context, recipients: tuple[str, ...]) -> None:
        """RCPT for each of a whole-message submission (HTTP): the suppressed ones are held back,
        any other refusal aborts the transaction and is raised."""
        try:
            for rcpt in recipients:
                try:
                    await self.rcpt(ctx, rcpt)
                except RelayError as exc:
                    if not is_suppression(exc):
                        raise
        except RelayError:
            await self.abort(ctx)
            raise

    # -- the end of a transaction -----------------------------------------------------------
    async def connect(self, ctx: Context) -> None:
        """A client connected (``ctx.listener``, ``ctx.peer``): the policies' on_connect may refuse it."""
        if self.policies.has("on_connect"):
            verdict = await self.policies.run("on_connect", ctx)
            if verdict:
                raise verdict_error(verdict)

    async def abort(self, ctx: Context) -> None:
        """The transaction ended without a commit (RSET, QUIT, a lost connection, a refusal, a store
        failure): policies give back what they reserved (``on_abort``). Idempotent, and a no-op once
        ``data()`` has committed. A front door whose transaction ends without ``data()`` calls it."""
        if not ctx.extra.pop(_OPEN, False):
            return
        if self.policies.has("on_abort"):
            await self.policies.notify("on_abort", ctx)
        await self._report_suppressed(ctx, None)

    async def _report_suppressed(self, ctx: Context, message_id: str | None) -> None:
        """The held-back recipients' ``suppressed`` events (with the message's id once committed)."""
        if not ctx.held_back or ctx.replayed is not None:
            return
        try:
            await self.on_suppressed(ctx, message_id)
        except Exception:  # an event lost is logged; the submission's answer stands
            log.exception("could not report suppressed recipients", extra={"queue_id": message_id})

    def abandon(self, ctx: Context | None) -> None:
        """:meth:`abort` for protocol callbacks that cannot await (a session's state reset)."""
        if ctx is None or not ctx.extra.get(_OPEN):
            return
        if not self.policies.has("on_abort") and not ctx.held_back:
            ctx.extra.pop(_OPEN, None)
            return
        task = asyncio.get_running_loop().create_task(self.abort(ctx))
        self._aborting.add(task)
        task.add_done_callback(self._aborting.discard)

    # -- data -----------------------------------------------------------------------------
    async def data(self, ctx: Context, raw: bytes) -> Outcome:
        """Check, sign and durably commit one message: the one end of every submission, whichever
        door. A failure aborts the transaction (policies give back their reservations); a commit
        closes it."""
        ctx.extra[SIZE] = len(raw)
        try:
            queue_id = await self._data(ctx, raw)
        except asyncio.CancelledError:
            ctx.extra.pop(_OPEN, None)  # the commit may still land: keep what was counted (high, never low)
            raise
        except Exception:
            await self.abort(ctx)
            raise
        ctx.extra.pop(_OPEN, None)
        if ctx.replayed is not None:
            return Outcome(queue_id, ctx.replayed.provider == "sandbox", ctx.replayed.timestamp,
                           queued=ctx.replayed.queued, replayed=ctx.replayed)
        if self.policies.has("on_commit"):
            await self.policies.notify("on_commit", ctx, queue_id)
        await self._report_suppressed(ctx, queue_id)
        return Outcome(queue_id, ctx.sandbox, ctx.accepted_at or self.clock(), tuple(ctx.held_back),
                       queued=ctx.expect_delay)

    async def _data(self, ctx: Context, raw: bytes) -> str:
        if ctx.identity is None or ctx.alias is None:
            raise AUTH_REQUIRED
        if msgs.bare_line_ending(raw):
            raise BARE_NEWLINE
        try:
            summary = msgs.summarize_strict(raw)
        except msgs.MalformedHeader as exc:
            raise RelayError(550, "5.6.0", "Malformed message header", str(exc), http_status=400) from None
        if len(summary.from_addresses) != 1:
            raise FROM_DENIED
        from_addr = summary.from_addresses[0]
        if from_addr != ctx.alias.email and await self._own_verified_alias(ctx.identity, from_addr) is None:
            raise FROM_DENIED
        if self.policies.has("on_data"):
            verdict = await self.policies.run("on_data", ctx, msgs.parse(raw))
            if verdict:
                raise verdict_error(verdict)
        if summary.sandbox and not ctx.sandbox:
            ctx.sandbox = sandboxed(ctx.identity, True)  # X-Relay-Sandbox in the message (as POST /send's header)
        queue_id = new_queue_id(ctx.sandbox)
        domain = from_addr.rpartition("@")[2]
        raw, message_id = msgs.complete_headers(msgs.strip_fields(raw), summary, queue_id, domain)
        raw = self.received(ctx, queue_id) + raw
        raw = await self.sign(domain, raw, ctx.identity.account_id)
        queue_id = await self._commit_once(ctx, summary, NewMessage(
            id=queue_id, ip_pool=ctx.ip_pool or ctx.alias.ip_pool, mail_from=ctx.mail_from, body=raw,
            recipients=list(ctx.recipients), created_at=self.clock(), expires_at=self.clock(),
            account_id=ctx.identity.account_id, api_key_id=ctx.identity.key_id, alias_id=ctx.alias.id,
            header_message_id=message_id, subject=summary.subject, source=ctx.source, upstream_id=ctx.route_upstream,
            sandbox=ctx.sandbox, idempotency_key=ctx.idempotency_key))
        if ctx.replayed is not None:
            return queue_id  # a duplicate: the original's id, nothing committed
        metrics.message_accepted(ctx.listener, ctx.ip_pool or "")
        log.info("message queued", extra={"queue_id": queue_id, "account": ctx.identity.account_name,
                                          "alias": ctx.alias.email, "pool": ctx.ip_pool, "upstream": None,
                                          "reply": None, "recipients": len(ctx.recipients), "size": len(raw)})
        return queue_id

    async def _commit_once(self, ctx: Context, summary: msgs.HeaderSummary, new: NewMessage) -> str:
        """:meth:`commit`, once per idempotency key (HTTP ``idempotency_key``, SMTP ``Idempotency-Key:``)
        in 24 hours: a duplicate commits nothing and gets the original's id (``ctx.replayed``)."""
        new.tags, new.meta = ctx.tags, ctx.metadata
        if ctx.held_back:
            new.suppressed = dict(ctx.held_back)
            new.recipients = new.recipients + [r for r in new.suppressed if r not in new.recipients]
        key = idempotency_scope(ctx.idempotency_key or summary.idempotency_key, new.sandbox)
        new.idempotency_key = None  # the 24-hour claim lives in idempotency_keys, not in the message
        if not key or new.account_id is None:
            await self.commit(new)
            return new.id
        original, ctx.accepted_at = await self.idempotency.begin(
            new.account_id, key, new.id, "sandbox" if new.sandbox else "smtp", ctx.expect_delay)
        if original is not None:
            ctx.replayed = original
            await self.abort(ctx)
            return original.message_id
        try:
            await self.commit(new)
        except Exception:  # not committed: the key is free again (cancelled: the commit may land, keep it)
            await self.idempotency.release(new.account_id, key, new.id)
            raise
        finally:
            self.idempotency.finish(new.account_id, key)
        return new.id

    def received(self, ctx: Context, queue_id: str) -> bytes:
        """The Received: field of this submission (RFC 5321 4.4; ``with`` per RFC 3848)."""
        if ctx.listener == "api":
            protocol = "HTTPS" if ctx.tls else "HTTP"
        else:
            protocol = "ESMTP" + ("S" if ctx.tls else "") + ("A" if ctx.identity and ctx.identity.key_id else "")
        return msgs.received_header(helo=ctx.helo, client=None if self.hide_client_address else ctx.peer,
                                    hostname=self.hostname, protocol=protocol, queue_id=queue_id)

    async def sign(self, domain: str, raw: bytes, account_id: str | None = None) -> bytes:
        """DKIM-sign with the keys of the domain's verified claim, and only for its owner ``account_id``."""
        domain = domain.lower()
        dom = await self._owned_domain(domain)
        if dom is None or not dom.verified or (account_id is not None and dom.account_id != account_id):
            return raw
        cached = self._signer_of.get(domain)
        if cached is None or cached[0] is not dom:  # keys are decrypted once per directory refresh
            keys = [DkimKey(k.selector, k.algorithm,
                            self.master_key.decrypt_str(k.private_key_enc, aad=dom.name).encode())
                    for k in dom.keys if k.active]
            cached = (dom, self.signers.get(domain, keys) if keys else None)
            self._signer_of[domain] = cached
        signer = cached[1]
        if signer is None:
            return raw
        started = time.perf_counter()
        signature = signer.sign(raw)
        metrics.dkim_signed(time.perf_counter() - started)
        return signature + raw

    async def commit(self, new: NewMessage) -> None:
        """Commit (group commit, fsync) and hand the message to the active queue. Never 250 before."""
        now = self.clock()
        new.created_at = now
        new.expires_at = now + dt.timedelta(seconds=self.max_age)
        if not new.sandbox:
            new.lease_owner = self.store.node_id
            new.lease_until = now + dt.timedelta(seconds=self.lease_seconds)
        try:
            await self.writer.enqueue(new)
        except Exception as exc:
            raise StoreError(f"enqueue failed: {exc!r}") from exc
        pending = [r for r in new.recipients if r not in new.suppressed]
        if pending and not new.sandbox:
            self.on_queued(QueuedMessage(
                id=new.id, ip_pool=new.ip_pool, mail_from=new.mail_from, body=new.body, recipients=pending,
                account_id=new.account_id, expires_at=new.expires_at, created_at=now, source=new.source,
                upstream_id=new.upstream_id))

    async def submit_system(self, *, sender: str, recipients: list[str], raw: bytes, source: str = "system",
                            mail_from: str | None = None, account_id: str | None = None,
                            ip_pool: str | None = None) -> str:
        """System mail (alias verification, DSNs): no alias, no policies; through ``[system] ip_pool``
        when set, else ``ip_pool`` (a DSN: the pool of the message it reports on), else ``default``."""
        queue_id = new_queue_id(False)
        await self.commit(NewMessage(
            id=queue_id, ip_pool=self.system_pool or ip_pool or DEFAULT_IP_POOL,
            mail_from=sender if mail_from is None else mail_from, body=raw,
            recipients=recipients, created_at=self.clock(), expires_at=self.clock(), account_id=account_id,
            source=source))
        return queue_id


@functools.lru_cache(maxsize=4096)
def _trusted_account(peer_ip: str, trusted: tuple[tuple[Any, str], ...]) -> str | None:
    """The account of the first trusted network holding ``peer_ip`` (parsed once per address)."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    for network, account in trusted:
        if ip.version == network.version and ip in network:
            return account
    return None


