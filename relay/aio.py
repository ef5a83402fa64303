"""asyncio helpers."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; True if it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11, when a cancellation arrives
    together with the event, wait_for returns normally and the cancellation is lost (gh-86296), so
    a loop around it never stops and a graceful stop that cancels and gathers it waits forever.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
