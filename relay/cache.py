"""A small TTL cache for directory lookups on the hot path (keys, aliases, domains, pools).

Changes made through the CLI or another node become visible within ``ttl`` seconds; changes made
by this process invalidate their entries at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        hit = self._data.get(key)
        now = self._clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        fut = self._inflight.get(key)
        if fut is not None:  # one load per key at a time, however many sessions ask
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await load()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._inflight.pop(key, None)
        self._data[key] = (now + self.ttl, value)
        fut.set_result(value)
        return value

    def invalidate(self, key: Any = None) -> None:
        if key is None:
            self._data.clear()
        else:
            self._data.pop(key, None)
