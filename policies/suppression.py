"""``suppression``: never send to an address on the account's suppression list.

RCPT to a suppressed address gets ``550 5.7.1`` (HTTP 422 with ``"suppressed": true``); the
message's other recipients still go. Entries carry a reason (``hard_bounce``, ``complaint``,
``unsubscribe``, ``manual``) and an optional expiry; hard bounces add themselves at delivery.
The list is managed with ``relay suppression add|list|remove|import|export``.

Settings (``[policies.suppression]``):

``cache_ttl`` (seconds, default 5)
    How long one lookup is reused. A change made with the CLI (or on another node) is seen by new
    transactions within this time. 0 asks the database at every RCPT.
"""

from __future__ import annotations

import time
from typing import Any

from policies.options import Options
from policies.spec import PolicyServices, Verdict
from relay.store.suppressions import SuppressionRec, Suppressions

SUPPRESSED = dict(code=550, enhanced="5.7.1", message="Recipient address rejected", http_status=422)
_CACHE_MAX = 50_000


class SuppressionPolicy:
    def __init__(self, options: dict[str, Any], services: PolicyServices) -> None:
        o = Options("suppression", options, ("cache_ttl",))
        self.cache_ttl = o.number("cache_ttl", 5.0)
        self.services = services
        self.now = services.clock
        self.list = Suppressions(services.sessions, services.reads)
        self._cache: dict[tuple[str, str], tuple[float, SuppressionRec | None]] = {}

    async def _lookup(self, account_id: str, address: str) -> SuppressionRec | None:
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
