"""relay.aio: the helpers the long-running loops (delivery poller, webhooks) wait with."""

from __future__ import annotations

import asyncio

import pytest

from relay.aio import wait_event


async def test_wait_event_returns_on_the_event_or_the_timeout():
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, ev.set)
    assert await wait_event(ev, 5) is True
    assert await wait_event(ev, 0) is True  # already set


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_cancellation_that_meets_the_event_still_stops_the_loop(loop_kind):
    """The race that hung a graceful stop: the poller's wake event set in the same loop iteration as
    the stop's cancel. asyncio.wait_for on 3.11 swallows the cancellation there."""

    async def main() -> bool:
        ev = asyncio.Event()

        async def poller() -> None:
            while True:
                await wait_event(ev, 10)
                ev.clear()

        task = asyncio.create_task(poller())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ev.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        task.cancel()
        return bool(done) and task.cancelled()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        assert uvloop.run(main())
    else:
        assert asyncio.run(main())
