"""``suppression``: never send to an address on the account's suppression list.

RCPT to a suppressed address gets ``550 5.7.1`` (HTTP 422 with ``"suppressed": true``); the
message's other recipients still go. Entries carry a reason (``hard_bounce``, ``complaint``,
``unsubscribe``, ``manual``) and an optional expiry; hard bounces add themselves at delivery.

The policy owns the list's storage (:mod:`policies.suppression_store`) and provides it to the core
as its ``suppression_book`` (:class:`policies.spec.SuppressionBook`): ``/api/v1/suppressions``,
``relay suppression add|list|remove|import|export`` and the bounce stage's automatic suppression
go through it. Without this policy enabled, none of them has a list to work on.

Settings (``[policies.suppression]``):

``cache_ttl`` (seconds, default 5)
    How long one lookup is reused. A change (through the API, the CLI or on another node) is seen by
    new transactions within this time. 0 asks the database at every RCPT.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from policies.options import Options
from policies.spec import NewSuppression, PolicyServices, SuppressionEntry, Verdict
from policies.suppression_store import Suppressions

SUPPRESSED = dict(code=550, enhanced="5.7.1", message="Recipient address rejected", http_status=422)
_CACHE_MAX = 50_000


class StoredBook:
    """The :class:`policies.spec.SuppressionBook` of the built-in policy: the store's ``suppressions``
    table, read and written in the gateway's threads (``services.runner``), dated by ``services.clock``."""

    def __init__(self, store: Suppressions, services: PolicyServices) -> None:
        self.store = store
        self.runner = services.runner
        self.clock = services.clock

    async def get(self, account_id: str, address: str, *, include_expired: bool = False) -> SuppressionEntry | None:
        return await self.runner.read(self.store.lookup, account_id, address, self.clock(),
                                      include_expired=include_expired)

    async def add(self, account_id: str, entries: Sequence[NewSuppression]) -> tuple[int, int]:
        return await self.runner.write(self.store.add, account_id, list(entries), self.clock())

    async def remove(self, account_id: str, addresses: Sequence[str]) -> int:
        return await self.runner.write(self.store.remove, account_id, list(addresses))

    async def record(self, account_id: str, address: str, reason: str, detail: str | None = None) -> None:
        await self.runner.write(self.store.record, account_id, address, reason, detail, self.clock())

    async def list(self, account_id: str, *, reason: str | None = None, include_expired: bool = False,
                   limit: int | None = None) -> list[SuppressionEntry]:
        return await self.runner.read(self.store.list, account_id, reason=reason, include_expired=include_expired,
                                      now=self.clock(), limit=limit)


class SuppressionPolicy:
    def __init__(self, options: dict[str, Any], services: PolicyServices) -> None:
        o = Options("suppression", options, ("cache_ttl",))
        self.cache_ttl = o.number("cache_ttl", 5.0)
        self.services = services
        self.now = services.clock
        self.list = Suppressions(services.sessions, services.reads)
        self.suppression_book = StoredBook(self.list, services)  # what the core reaches the lists through
        self._cache: dict[tuple[str, str], tuple[float, SuppressionEntry | None]] = {}

    async def _lookup(self, account_id: str, address: str) -> SuppressionEntry | None:
        key = (account_id, address)
        hit = self._cache.get(key)
        mono = time.monotonic()
        if hit is not None and hit[0] > mono:
            return hit[1]
        rec = await self.services.runner.read(self.list.lookup, account_id, address, self.now())
        if self.cache_ttl > 0:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = (mono + self.cache_ttl, rec)
        return rec

    async def on_rcpt(self, ctx: Any, recipient: str) -> Verdict | None:
        if ctx.identity is None:
            return None
        rec = await self._lookup(ctx.identity.account_id, recipient.strip().lower())
        if rec is None or not rec.active(self.now()):
            return None
        return Verdict.reject(**SUPPRESSED, reason=f"suppressed: {rec.reason}")
