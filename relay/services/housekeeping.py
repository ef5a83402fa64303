"""Background work behind the gateway's features, started once per gateway process:

- the webhook delivery worker (:class:`relay.events.webhooks.WebhookService`);
- DKIM rotation: every ``DKIM_CHECK_INTERVAL`` seconds, domains with a pending selector switch
  signing to it once its DNS record is seen, and keys past their grace period are dropped;
- pruning of expired idempotency keys.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from relay.events.webhooks import WebhookService
from relay.services.admin import Admin
from relay.store import Store
from relay.store.runner import DbRunner
from relay.submission.pipeline import Pipeline

log = logging.getLogger(__name__)

DKIM_CHECK_INTERVAL = 60.0
PRUNE_INTERVAL = 3600.0


class TaskParts(Protocol):
    """What the background work reads of the gateway (:class:`relay.gateway.Gateway` is one)."""

    worker: int
    store: Store
    runner: DbRunner
    admin: Admin
    pipeline: Pipeline
    webhooks: WebhookService


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
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("API housekeeping failed")
