"""``quota``: per account, API key, alias and IP pool, a rate and a daily cap; pool warm-up.

What is counted: one unit per recipient, reserved at RCPT. A recipient over a limit gets
``452 4.5.3`` when others of the message were accepted (the client sends to those and retries the
rest later), ``451 4.7.1`` when it is the first (the whole message waits); HTTP 429. Never 5xx.
A transaction that does not end in a commit (RSET, QUIT, a lost connection, a refusal at DATA, a
store failure) gives its reservations back (``on_abort``), as does a recipient that a later policy
refused (``on_commit``). Sandbox sends count against rates only (as in the seeds), not against daily caps.

Counting is atomic in the database (see :mod:`policies.quota_store`), so caps hold exactly across
concurrent sessions, worker processes and nodes sharing one PostgreSQL.

Limits are set per target with ``relay quota set`` (stored, seen by every node within
``cache_ttl``); ``[policies.quota]`` may give defaults for targets without their own:

``account_rate``, ``key_rate``, ``alias_rate``, ``pool_rate``
    ``"N/s"``, ``"N/m"`` or ``"N/h"``: a token bucket of N, refilled at N per period.
``account_daily``, ``key_daily``, ``alias_daily``, ``pool_daily``
    Recipients per UTC day.
``pool_warmup``
    ``"1:50,2:100,3:500,..."``: day N of an IP pool's life (day 1 = the UTC day it was created, or
    its ``--warmup-start``) -> daily cap; the cap of the last listed day <= N applies; after the last
    listed day the warm-up is over.
``cache_ttl`` (seconds, default 5)
    How long limits read from the database are reused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from policies.quota_rules import Effective, effective, recipients_left, targets
from policies.spec import DRY_RUN, PolicyServices, Verdict
from relay.cache import TTLCache
from relay.store.directory import Directory
from relay.store.ip_pools import Pools
from policies.quota_admin import KEYS, account_limits, parse_options  # noqa: F401  (KEYS, parse_options: public here too)
from policies.quota_store import Charge, LimitRec, QuotaStore

log = logging.getLogger(__name__)

FIRST_OVER = dict(code=451, enhanced="4.7.1", message="Too much mail, try again later", http_status=429)
MORE_OVER = dict(code=452, enhanced="4.5.3", message="Too many recipients, try again later", http_status=429)
_STATE = "quota"  # ctx.extra[_STATE]: [(recipient, (Charge, ...)), ...] reserved in this transaction


class QuotaPolicy:
    def __init__(self, options: dict[str, Any], services: PolicyServices) -> None:
        self.cache_ttl, self.defaults = parse_options(options)
        self.services = services
        self.now = services.clock
        self.store = QuotaStore(services.sessions, services.reads)
        self._limits: TTLCache[dict[str, LimitRec]] = TTLCache(self.cache_ttl)
        self._pools: TTLCache[dt.date | None] = TTLCache(self.cache_ttl)
        self._pruned: dt.date | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- GET /api/v1/usage ------------------------------------------------------------------------
    async def usage(self, account_id: str, now: dt.datetime) -> list[dict[str, Any]]:
        """The account's limited targets with what is used and left today."""
        directory = Directory(self.services.sessions, self.services.reads)

        pools = Pools(self.services.sessions, self.services.reads)

        def read() -> list[dict[str, Any]]:
            own = frozenset(p.name for p in pools.list() if p.account_id == account_id)
            return account_limits(directory, self.store, self.defaults, directory.get_account_by_id(account_id), now,
                                  own)

        return await self.services.runner.read(read)

    # -- limits of one submission -----------------------------------------------------------------
    async def limits_of(self, ctx: Any, now: dt.datetime) -> list[Effective]:
        ident = ctx.identity
        if ident is None:
            return []
        pool = ctx.ip_pool
        pairs = targets(ident.account_id, ident.key_id, ctx.alias.id if ctx.alias else None, pool)
        names = tuple(t for _, t in pairs)
        rows = await self._limits.get(names, lambda: self.services.runner.read(self.store.limits, names))
        if not rows and not self.defaults:
            return []
        pool_start = None
        if pool and (self.defaults.get("pool") or any(r.spec.warmup for r in rows.values())):
            pool_start = await self._pools.get(pool, lambda: self.services.runner.read(self.store.pool_started, pool))
        today = now.astimezone(dt.timezone.utc).date()
        out = []
        for kind, target in pairs:
            row = rows.get(target)
            eff = effective(kind, target, row.spec if row else None, self.defaults.get(kind), today=today,
                            pool_start=pool_start)
            if eff.limited:
                out.append(eff)
        return out

    @staticmethod
    def charges(limits: list[Effective], today: dt.date, n: int, sandbox: bool) -> tuple[Charge, ...]:
        out = []
        for e in limits:
            daily = None if sandbox else e.daily
            if daily is None and e.rate is None:
                continue
            out.append(Charge(e.target, n, today if daily is not None else None, daily, e.rate))
        return tuple(out)

    # -- hooks ------------------------------------------------------------------------------------
    async def on_rcpt(self, ctx: Any, recipient: str) -> Verdict | None:
        now = self.now()
        limits = await self.limits_of(ctx, now)
        if not limits:
            return None
        today = now.astimezone(dt.timezone.utc).date()
        if ctx.extra.get(DRY_RUN):
            charges = self.charges(limits, today, len(ctx.recipients) + 1, ctx.sandbox)
            over = await self.services.runner.read(self.store.check, charges, now) if charges else None
        else:
            charges = self.charges(limits, today, 1, ctx.sandbox)
            if not charges:
                return None
            self._prune(today)
            over = await self.services.runner.write(self.store.reserve, charges, now)
            if over is None:
                ctx.extra.setdefault(_STATE, []).append((recipient, charges))
        if over is None:
            return None
        target, what = over
        reason = f"over the {what} limit of {target}"
        return Verdict.tempfail(**(MORE_OVER if ctx.recipients else FIRST_OVER), reason=reason)

    async def on_commit(self, ctx: Any, queue_id: str) -> None:
        """Give back the reservations of recipients that a later policy refused (not stored)."""
        reserved = ctx.extra.get(_STATE)
        if not reserved:
            return None
        drop = recipients_left([r for r, _ in reserved], ctx.recipients)
        if drop:
            charges = [c for i in drop for c in reserved[i][1]]
            ctx.extra[_STATE] = [x for i, x in enumerate(reserved) if i not in set(drop)]
            await self.services.runner.write(self.store.refund, charges, self.now())
        return None

    async def on_abort(self, ctx: Any) -> None:
        reserved = ctx.extra.pop(_STATE, None)
        if reserved:
            await self.services.runner.write(self.store.refund, [c for _, cs in reserved for c in cs], self.now())

    def _prune(self, today: dt.date) -> None:
        """Once a day per process: drop daily counters older than a week."""
        if self._pruned == today:
            return
        self._pruned = today
        task = asyncio.get_running_loop().create_task(
            self.services.runner.write(self.store.prune, today - dt.timedelta(days=7)))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not prune old quota counters", extra={"error": repr(task.exception())})

