"""An account's webhooks as the HTTP API manages them (:mod:`relay.events.webhooks` delivers them).

A webhook's URL is http(s); its events are any of :data:`relay.store.webhooks.EVENTS` (default:
all). Its signing secret (``whsec_...``) is made here, returned once, and stored encrypted under the
master key. Another account's webhook is :class:`relay.vocab.NotFound`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from relay.events.webhooks import WebhookService
from relay.secrets import MasterKey
from relay.store.runner import DbRunner
from relay.store.webhooks import EVENTS, DeliveryRec, WebhookRec, new_webhook_id
from relay.ops.targets import default_port, resolve_checked
from relay.vocab import Conflict, Invalid


class WebhookAdmin:
    def __init__(self, runner: DbRunner, webhooks: WebhookService, master_key: MasterKey, *,
                 max_per_account: int = 10) -> None:
        self.max_per_account = max_per_account
        self.runner = runner
        self.webhooks = webhooks
        self.store = webhooks.store
        self.master_key = master_key

    async def webhooks_of(self, account_id: str) -> list[WebhookRec]:
        return list(await self.runner.read(self.store.list, account_id))

    async def get(self, account_id: str, webhook_id: str) -> WebhookRec:
        """The account's webhook, else NotFound."""
        rec: WebhookRec = await self.runner.read(self.store.get, account_id, webhook_id)
        return rec

    async def create(self, account_id: str, url: str, events: Sequence[str] | None,
                     description: str | None) -> tuple[WebhookRec, str]:
        """The new webhook and its signing secret (shown once)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid("must be an http:// or https:// URL", "url")
        chosen = sorted(set(events or EVENTS))
        bad = [e for e in chosen if e not in EVENTS]
        if bad:
            raise Invalid(f"unknown event {bad[0]!r}; choose from {', '.join(EVENTS)}", "events")
        await resolve_checked(parts.hostname, default_port(url), self.webhooks.allow_targets)
        if len(await self.webhooks_of(account_id)) >= self.max_per_account:
            raise Conflict(f"An account may have at most {self.max_per_account} webhooks")
        secret = "whsec_" + secrets.token_urlsafe(32)
        wid = new_webhook_id()
        rec: WebhookRec = await self.runner.write(
            self.store.create, webhook_id=wid, account_id=account_id, url=url, events=chosen,
            secret_enc=self.master_key.encrypt_str(secret, aad=wid), description=description)
        await self.webhooks.refresh()
        return rec, secret

    async def delete(self, account_id: str, webhook_id: str) -> None:
        """The webhook and its pending deliveries."""
        await self.get(account_id, webhook_id)
        await self.runner.write(self.store.delete, account_id, webhook_id)
        self.webhooks.forget(webhook_id)
        await self.webhooks.refresh()

    async def deliveries(self, account_id: str, webhook_id: str, limit: int) -> list[DeliveryRec]:
        """Newest first: pending (with the next attempt), delivered or failed."""
        await self.get(account_id, webhook_id)
        return list(await self.runner.read(self.store.deliveries, webhook_id, limit))
