"""An account's suppression list as the HTTP API manages it.

Addresses are checked with the one address rule (:func:`relay.submission.compose.check_address`)
and stored in lower case; an expiry without a time zone is UTC. Adding an address with the reason
``complaint`` raises the ``complained`` webhook event.
"""

from __future__ import annotations

import datetime as dt

from relay.events.webhooks import WebhookService
from relay.store import Store
from relay.store.runner import DbRunner
from relay.store.suppressions import (
    REASONS,
    NewSuppression,
    SuppressionRec,
    Suppressions,
)
from relay.submission.compose import check_address
from relay.vocab import Invalid

__all__ = ["REASONS", "SuppressionList"]
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


class SuppressionList:
    def __init__(self, runner: DbRunner, store: Store, webhooks: WebhookService) -> None:
        self.runner = runner
        self.store = Suppressions(store.sessions, store.reads)
        self.webhooks = webhooks

    async def entries(self, account_id: str, *, reason: str | None, limit: int) -> list[SuppressionRec]:
        """The active entries, newest first."""
        return list(await self.runner.read(self.store.list, account_id, reason=reason, limit=limit))

    async def add(self, account_id: str, email: str, reason: str, detail: str | None,
                  expires_at: dt.datetime | None) -> SuppressionRec | None:
        """Add (or update) one address; returns its entry (None when ``expires_at`` is already past)."""
        try:
            address = check_address(email, "email").lower()
        except ValueError as exc:
            raise Invalid(str(exc), "email") from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        await self.runner.write(self.store.add, account_id, [NewSuppression(address, reason, detail, expires_at)])
        rec = await self.runner.read(self.store.lookup, account_id, address, _EPOCH)
        if reason == "complaint":
            await self.webhooks.emit(account_id, "complained", [{"recipient": address, "detail": detail}])
        return rec

    async def remove(self, account_id: str, email: str) -> None:
        """NotFound when the address is not on the list."""
        await self.runner.write(self.store.remove, account_id, [email])
