"""``GET /api/v1/usage`` for one account: :func:`relay.services.usage.account_usage` in a store thread."""

from __future__ import annotations

from typing import Any

from relay.ops.config import Settings
from relay.services.usage import account_usage
from relay.store import Store
from relay.store.runner import DbRunner


async def usage_today(runner: DbRunner, store: Store, settings: Settings, account_id: str) -> dict[str, Any]:
    """Today's sends against the account's quotas and its pools' warm-up caps."""
    account = await runner.read(store.directory.get_account_by_id, account_id)
    usage: dict[str, Any] = await runner.read(account_usage, store, settings, account)
    return usage
