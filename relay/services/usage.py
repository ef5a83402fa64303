"""``GET /api/v1/usage``: one account's sends today, and its limits as the enabled policies report
them (the quota policy's rates, daily caps and IP pools' warm-up; see its ``usage`` hook).
``enforced`` says whether any enabled policy limits the account at all."""

from __future__ import annotations

import datetime as dt
from typing import Any

from relay.store import Store
from relay.store.runner import DbRunner
from relay.store.tracking import Tracking
from relay.submission.policyset import PolicySet
from relay.vocab import utcnow


async def usage_today(runner: DbRunner, store: Store, policies: PolicySet, account_id: str,
                      now: dt.datetime | None = None) -> dict[str, Any]:
    """Today's sends against the account's quotas and its IP pools' warm-up caps."""
    now = now or utcnow()
    today = now.astimezone(dt.timezone.utc).date()
    day_start = dt.datetime.combine(today, dt.time(), tzinfo=dt.timezone.utc)
    account = await runner.read(store.directory.get_account_by_id, account_id)
    sent = await runner.read(Tracking(store.sessions, store.reads).sent_today, account.id, day_start)
    reports = [limits for _, limits in await policies.gather("usage", account.id, now) if limits is not None]
    return {"day": today.isoformat(), "enforced": bool(reports), "sent_today": sent,
            "limits": [limit for limits in reports for limit in limits]}
