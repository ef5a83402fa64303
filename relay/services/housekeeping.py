"""Background work behind the gateway's features, started once per gateway process:

- the webhook delivery worker (:class:`relay.events.webhooks.WebhookService`);
- DKIM rotation: every ``DKIM_CHECK_INTERVAL`` seconds, domains with a pending selector switch
  signing to it once its DNS record is seen, and keys past their grace period are dropped;
- pruning of expired idempotency keys, dashboard sessions and set-password links, and of delivery
  events older than ``[store] events_retention`` (in batches of :data:`EVENT_BATCH`, one short transaction each).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any, Protocol

from relay.events.webhooks import WebhookService
from relay.ops.config import Settings
from relay.services.admin import Admin
from relay.store import Store, utcnow
from relay.store.runner import DbRunner
from relay.services.users import Users
from relay.submission.pipeline import Pipeline

log = logging.getLogger(__name__)

DKIM_CHECK_INTERVAL = 60.0
PRUNE_INTERVAL = 3600.0
EVENT_BATCH = 5000


class TaskParts(Protocol):
    """What the background work reads of the gateway (:class:`relay.gateway.Gateway` is one)."""

    worker: int
    settings: Settings
    store: Store
    runner: DbRunner
    admin: Admin
    pipeline: Pipeline
    webhooks: WebhookService
    users: Users


def start(gateway: TaskParts) -> list[asyncio.Task[Any]]:
    """Every process works the webhook queue; one (worker 0) does the housekeeping."""
    tasks = [gateway.webhooks.start()]
    if gateway.worker == 0:
        tasks.append(asyncio.create_task(_housekeeping(gateway), name="api-housekeeping"))
    return tasks


async def check_rotations(gateway: TaskParts) -> int:
    """One DKIM rotation pass over the domains that have one under way. Returns how many changed."""
    recs = await gateway.runner.read(gateway.store.directory.domains_rotating)
    changed = 0
    for rec in recs:
        try:
            after = await asyncio.to_thread(gateway.admin.check_claim_rotation, rec)
        except Exception:
            log.exception("DKIM rotation check failed", extra={"domain": rec.name})
            continue
        if after.keys != rec.keys:
            changed += 1
            log.info("DKIM keys changed", extra={"domain": rec.name,
                                                 "active": [k.selector for k in after.keys if k.active]})
    if changed:
        gateway.pipeline.invalidate()
    return changed


async def prune_events(gateway: TaskParts, now: dt.datetime | None = None) -> int:
    """Delete the events older than ``[store] events_retention`` (0: none), batch by batch, letting the
    event loop and the other writers in between. Returns how many."""
    retention = gateway.settings.store.events_retention
    if not retention:
        return 0
    before = (now or utcnow()) - dt.timedelta(seconds=retention)
    total = 0
    while True:
        n = await gateway.runner.write(gateway.store.queue.prune_events, before, EVENT_BATCH)
        total += n
        if n < EVENT_BATCH:
            break
        await asyncio.sleep(0)
    if total:
        log.info("old delivery events pruned", extra={"events": total, "before": before.isoformat()})
    return total


async def _housekeeping(gateway: TaskParts) -> None:
    loop = asyncio.get_running_loop()
    next_prune = loop.time() + 60.0
    while True:
        await asyncio.sleep(DKIM_CHECK_INTERVAL)
        try:
            await check_rotations(gateway)
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL
                await gateway.runner.write(gateway.pipeline.idempotency.store.prune)
                await gateway.users.prune()
                await prune_events(gateway)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("API housekeeping failed")
