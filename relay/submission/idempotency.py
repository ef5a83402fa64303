"""Idempotent submissions: the same key within 24 hours gives the original result and sends nothing.

Used by the pipeline for both front doors (HTTP ``idempotency_key``, SMTP ``Idempotency-Key:``
header). Within one process, concurrent duplicates wait on the first one's future; across
processes and nodes the claim's primary key in the store decides, and a duplicate polls until the
owner's message is committed (or its claim is released or abandoned).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

from relay.vocab import RelayError
from relay.store import utcnow
from relay.store.idempotency import IdempotencyRec, IdempotencyStore
from relay.store.runner import DbRunner

log = logging.getLogger(__name__)

WINDOW = dt.timedelta(hours=24)
MAX_KEY_LENGTH = 128
ABANDONED_AFTER = dt.timedelta(seconds=60)  # a claim this old without its message: the owner died
IN_PROGRESS = RelayError(451, "4.3.0", "A request with this idempotency key is still in progress, try again later",
                         http_status=409)
KEY_TOO_LONG = RelayError(550, "5.6.0", f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters",
                          http_status=400, field="idempotency_key")


@dataclass(frozen=True)
class Original:
    """The result of the request that owned the key."""

    message_id: str
    provider: str
    queued: bool
    timestamp: dt.datetime


def _original(rec: IdempotencyRec) -> Original:
    return Original(rec.message_id, rec.provider, rec.queued, rec.created_at)


class Idempotency:
    def __init__(self, runner: DbRunner, store: IdempotencyStore, *, clock: Callable[[], dt.datetime] = utcnow,
                 wait: float = 30.0) -> None:
        self.runner = runner
        self.store = store
        self.clock = clock
        self.wait = wait  # how long a duplicate waits for an owner on another node
        self._inflight: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def lookup(self, account_id: str, key: str) -> Original | None:
        """The front door's fast path, before any policy runs: the original result if the key is
        taken (waiting for an owner in flight), else None."""
        fut = self._inflight.get((account_id, key))
        if fut is not None:
            await asyncio.shield(fut)
        rec = await self.runner.read(self.store.get, account_id, key, self.clock())
        return None if rec is None else await self._settle(rec)

    async def begin(self, account_id: str, key: str, message_id: str, provider: str,
                    queued: bool) -> tuple[Original | None, dt.datetime]:
        """Claim ``key`` for ``message_id``: (None, accepted at) when this request owns it (then
        :meth:`finish` or :meth:`release` must follow), else (the original result, its time)."""
        if len(key) > MAX_KEY_LENGTH:
            raise KEY_TOO_LONG
        k = (account_id, key)
        abandoned: str | None = None
        while True:
            fut = self._inflight.get(k)
            if fut is not None:
                await asyncio.shield(fut)
                continue
            mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inflight[k] = mine
            now = self.clock()
            try:
                rec = await self.runner.write(self.store.claim, account_id, key, message_id, provider, queued, now,
                                              WINDOW, abandoned=abandoned)
            except BaseException:
                self._done(k, mine)
                raise
            if rec is None:
                return None, now
            self._done(k, mine)
            original = await self._settle(rec)
            if original is not None:
                return original, original.timestamp
            abandoned = rec.message_id

    async def _settle(self, rec: IdempotencyRec) -> Original | None:
        """The original result once its owner committed; None when the owner released or abandoned the key."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        delay = 0.02
        while not rec.committed:
            if self.clock() - rec.created_at > ABANDONED_AFTER:
                return None
            if loop.time() > deadline:
                raise IN_PROGRESS
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            fresh = await self.runner.read(self.store.get, rec.account_id, rec.key, self.clock())
            if fresh is None or fresh.message_id != rec.message_id:
                return None
            rec = fresh
        return _original(rec)

    def finish(self, account_id: str, key: str) -> None:
        """The owner's message is committed: wake the duplicates waiting in this process."""
        k = (account_id, key)
        fut = self._inflight.get(k)
        if fut is not None:
            self._done(k, fut)

    async def release(self, account_id: str, key: str, message_id: str) -> None:
        """The owner's commit failed: free the key (a duplicate may then send). If even that fails,
        the claim is taken over once it is :data:`ABANDONED_AFTER` old."""
        try:
            await self.runner.write(self.store.release, account_id, key, message_id)
        except Exception:
            log.warning("could not release an idempotency key", extra={"queue_id": message_id}, exc_info=True)
        finally:
            self.finish(account_id, key)

    def _done(self, k: tuple[str, str], fut: asyncio.Future[None]) -> None:
        if self._inflight.get(k) is fut:
            del self._inflight[k]
        if not fut.done():
            fut.set_result(None)
