"""``relay route explain``: what the gateway would do with a submission, without sending it.

It runs the real pipeline (key -> account, sender -> verified alias -> IP pool, scope check,
recipient limit) with every enabled policy asked in dry-run mode (``ctx.extra[DRY_RUN]``: decide,
change nothing), and records each policy's own verdict for MAIL and for each recipient. Upstreams
are listed in delivery order (priority; weighted random among equal priorities).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Sequence

from policies.spec import DRY_RUN, PolicyServices, Verdict
from relay.ops.config import Settings
from relay.vocab import Invalid, NotFound, RelayError
from relay.submission.pipeline import Pipeline
from relay.vocab import Context, Identity, SEND_SCOPES
from relay.submission.policyset import PolicySet
from relay.submission.policyset import load as load_policies
from relay.secrets import parse_api_key, verify_api_key
from relay.store import Store, utcnow
from relay.store.runner import DbRunner


@dataclass(frozen=True)
class PolicyVerdict:
    policy: str
    action: str  # "no opinion", "accept", "reject", "tempfail"
    reply: str | None = None  # "550 5.7.1 Recipient address rejected" (what the client would see)
    reason: str | None = None  # internal


@dataclass(frozen=True)
class Step:
    command: str  # "MAIL FROM" or "RCPT TO"
    address: str
    accepted: bool
    reply: str
    verdicts: tuple[PolicyVerdict, ...] = ()


@dataclass
class Explanation:
    key_id: str
    account: str
    scopes: list[str]
    sender: str
    alias: dict[str, Any] | None = None
    ip_pool: str | None = None
    pool_day: int | None = None  # day N of the IP pool's life (its warm-up day)
    pool_owner: str | None = None  # "operator" (open, or restricted and granted) or "account NAME"
    upstreams: list[dict[str, Any]] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    mail: Step | None = None
    recipients: list[Step] = field(default_factory=list)


class _Recording(PolicySet):
    """Asks every policy (``PolicySet.explain``), keeps each one's verdict, answers like ``run``."""

    def __init__(self, inner: PolicySet) -> None:
        super().__init__(inner.policies)
        self.last: list[tuple[str, Verdict | None]] | None = None  # None: the policies were not asked

    async def run(self, hook: str, *args: Any) -> Verdict | None:
        self.last = await self.explain(hook, *args)
        return next((v for _, v in self.last if v is not None and v.refuses), None)


def _verdicts(names: Sequence[str], results: list[tuple[str, Verdict | None]] | None) -> tuple[PolicyVerdict, ...]:
    if results is None:  # refused before the policies were asked
        return ()
    by_name = dict(results)
    out = []
    for name in names:
        v = by_name.get(name)
        if v is None:
            out.append(PolicyVerdict(name, "no opinion"))
        elif not v.refuses:
            out.append(PolicyVerdict(name, "accept", reason=v.reason or None))
        else:
            out.append(PolicyVerdict(name, v.action.value, f"{v.code} {v.enhanced} {v.message}", v.reason or None))
    return tuple(out)


def _key_id(store: Any, key: str) -> str:
    """A full API key (checked) or just its public id ``rk_xxxxxxxx``."""
    parsed = parse_api_key(key)
    key_id = parsed or key.strip()
    rec = store.directory.find_api_key(key_id)
    if rec is None:
        raise NotFound(f"no API key {key_id!r}")
    if parsed and not verify_api_key(key, rec.key_hash):
        raise Invalid(f"the secret part of key {key_id} does not match", field="key")
    return key_id


def explain_route(store: Store, settings: Settings, *, key: str, sender: str, recipients: Sequence[str],
                  listener: str = "submission") -> Explanation:
    """``relay route explain``: load the enabled policies as the gateway does and ask them (dry run)."""
    runner = DbRunner(store.dialect)
    try:
        services = PolicyServices(sessions=store.sessions, reads=store.reads, runner=runner, clock=utcnow,
                                  max_message_size=lambda: settings.smtp.max_message_size)
        policies = load_policies(settings.policies.enabled, settings.policies.options, services)
        return asyncio.run(explain(store, runner, settings, policies, key=key, sender=sender,
                                   recipients=recipients, listener=listener))
    finally:
        runner.shutdown()


async def explain(store: Store, runner: DbRunner, settings: Settings, policies: PolicySet, *, key: str,
                  sender: str, recipients: Sequence[str], listener: str = "submission",
                  now: dt.datetime | None = None) -> Explanation:
    key_id = await runner.read(_key_id, store, key)
    rec = await runner.read(store.directory.find_api_key, key_id)
    out = Explanation(key_id=rec.id, account=rec.account_name, scopes=sorted(rec.scopes), sender=sender,
                      policies=[name for name, _ in policies.policies])
    if rec.revoked or not rec.scopes & SEND_SCOPES:
        why = "revoked" if rec.revoked else "has no send scope"
        out.mail = Step("AUTH", rec.id, False, f"535 5.7.8 Authentication credentials invalid (the key {why})")
        return out
    recording = _Recording(policies)
    pipeline = Pipeline(store=store, runner=runner, master_key=None, hostname=settings.hostname,  # type: ignore[arg-type]
                        lease_seconds=settings.delivery.lease_seconds, max_age=settings.delivery.max_age, policies=recording,
                        max_recipients=settings.smtp.max_recipients, clock=lambda: now or utcnow())
    ident = Identity(rec.account_id, rec.account_name, rec.id, rec.scopes)
    ctx = Context(listener=listener, peer="(relay route explain)", identity=ident, extra={DRY_RUN: True})
    recording.last = None
    try:
        alias = await pipeline.mail(ctx, sender)
    except RelayError as exc:
        out.mail = Step("MAIL FROM", sender, False, exc.smtp_reply, _verdicts(out.policies, recording.last))
        return out
    out.mail = Step("MAIL FROM", sender, True, "250 2.1.0 Sender OK", _verdicts(out.policies, recording.last))
    out.alias = {"id": alias.id, "email": alias.email, "name": alias.name, "default": alias.is_default}
    out.ip_pool = alias.ip_pool
    pool = await runner.read(store.ip_pools.get, alias.ip_pool)
    out.pool_owner = "operator" if pool is None or pool.account_id is None else f"account {rec.account_name}"
    if pool is not None and pool.restricted:
        out.pool_owner += " (restricted; granted to this account)"
    out.upstreams = await runner.read(_upstreams, store, alias.ip_pool)
    created = dict(await runner.read(store.directory.list_ip_pools)).get(alias.ip_pool)
    if created is not None:
        today = (now or utcnow()).astimezone(dt.timezone.utc).date()
        out.pool_day = (today - created.astimezone(dt.timezone.utc).date()).days + 1
    try:
        for rcpt in recipients:
            recording.last = None
            try:
                await pipeline.rcpt(ctx, rcpt)
            except RelayError as exc:
                out.recipients.append(Step("RCPT TO", rcpt, False, exc.smtp_reply,
                                           _verdicts(out.policies, recording.last)))
            else:
                out.recipients.append(Step("RCPT TO", rcpt, True, "250 2.1.5 Recipient OK",
                                           _verdicts(out.policies, recording.last)))
    finally:
        await pipeline.abort(ctx)  # a policy that reserved despite the dry run gives it back
    return out


def _upstreams(store: Any, pool: str) -> list[dict[str, Any]]:
    ups = [u for u in store.directory.list_upstreams(pool) if u.is_active]
    ups.sort(key=lambda u: (u.priority, -u.weight, u.name))
    return [{"name": u.name, "host": u.host, "port": u.port, "encryption": u.encryption, "priority": u.priority,
             "weight": u.weight} for u in ups]


def render(e: Explanation) -> str:
    lines = [f"key         {e.key_id} (account {e.account}; scopes {', '.join(e.scopes)})"]
    if e.alias:
        lines.append(f"alias       {e.alias['email']} ({e.alias['id']})")
    if e.ip_pool:
        day = f" (day {e.pool_day} of its life)" if e.pool_day else ""
        owner = f"; owner: {e.pool_owner}" if e.pool_owner else ""
        lines.append(f"ip pool     {e.ip_pool}{day}{owner}")
        if e.upstreams:
            for i, u in enumerate(e.upstreams, 1):
                lines.append(f"{'upstreams' if i == 1 else '':12}{i}. {u['name']}  {u['host']}:{u['port']}  "
                             f"{u['encryption']}  priority {u['priority']}  weight {u['weight']}")
            lines.append(" " * 12 + "(in this order; weighted random among equal priorities)")
        else:
            lines.append("upstreams   none: mail for this pool would wait in the queue")
    lines.append(f"policies    {', '.join(e.policies) or 'none enabled'}")
    width = max([len(p) for p in e.policies] + [6])
    for step in ([e.mail] if e.mail else []) + e.recipients:
        lines.append(f"{step.command} <{step.address}>: {step.reply}")
        for v in step.verdicts:
            text = v.action if v.reply is None else f"{v.action}: {v.reply}"
            if v.reason:
                text += f"  ({v.reason})"
            lines.append(f"    {v.policy:{width}}  {text}")
    return "\n".join(lines)
