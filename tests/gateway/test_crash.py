"""Crash recovery with real processes: ``relay serve`` killed with SIGKILL, then restarted.

The gateway is provisioned with the ``relay`` CLI, runs as a subprocess, and delivers to a Sink
(from conftest) running in the test's own event loop. Deliveries are counted by Message-ID at the
sink; the alias verification mail also arrives there and is ignored.
"""

from __future__ import annotations

import asyncio
from collections import Counter


from tests.conftest import Sink, wait_for

from tests.support.crash import DiscardingSink, N, SlowSink, counts, submit_all, wait_settled


async def test_kill9_right_after_accepting_then_restart_delivers_everything_once(node):
    n = node()  # the upstream's port is closed for now
    sink_port = n.sink_port
    await n.start()
    mids = await submit_all(n)
    n.kill9()  # right after the 250s: nothing can have been delivered

    sink = Sink(sink_port)
    await sink.start()
    try:
        assert counts(sink, mids) == Counter()
        await n.start()
        await wait_for(lambda: len(counts(sink, mids)) == N, timeout=20)
        await wait_settled(n)
        await asyncio.sleep(0.3)  # a late duplicate would show up now
        c = counts(sink, mids)
        assert sorted(c) == sorted(mids)
        assert all(v == 1 for v in c.values()), {k: v for k, v in c.items() if v != 1}
        states = n.states()
        assert states["delivered"] >= N + 1  # ours and the verification mail
        assert set(states) == {"delivered"}
    finally:
        n.stop()
        await sink.stop()


async def test_kill9_with_deliveries_in_flight_loses_nothing_and_counts_what_it_sends_again(node):
    """The upstream took the bodies in flight at their dot; the kill came before its 250. Those are
    sent again after the restart (RFC 5321 6.1: no reply, no delivery): possible duplicates, each
    counted, never a loss."""
    n = node()
    sink = SlowSink(n.sink_port)
    await sink.start()
    try:
        await n.start()
        mids = await submit_all(n)
        # kill while some bodies are at the sink and their 250 is still pending
        await wait_for(lambda: len(counts(sink, mids)) >= 2, timeout=20, interval=0.005)
        n.kill9()
        got_before = len(counts(sink, mids))
        assert 0 < got_before < N, "the kill came too late to hit deliveries in flight"

        await n.start()
        await wait_for(lambda: len(counts(sink, mids)) == N, timeout=20)
        await wait_settled(n)
        await asyncio.sleep(0.3)
        c = counts(sink, mids)
        assert sorted(c) == sorted(mids)  # every 250'd message arrived
        duplicates = sum(v - 1 for v in c.values())
        assert 0 < duplicates <= n.resent(), (c, n.resent())  # a copy twice only where it was counted
        assert set(n.states()) == {"delivered"}
    finally:
        n.stop()
        await sink.stop()


async def test_an_upstream_that_discards_on_a_lost_connection_loses_nothing(node):
    """The upstream commits only when it can answer (aiosmtpd): the bodies between their dot and its
    reply at the kill are discarded there. Taking a sent dot for a delivery lost them (#16: 16 of
    2,000); now every one arrives, a second copy only where a resend was counted."""
    n = node()
    sink = DiscardingSink(n.sink_port)
    await sink.start()
    try:
        await n.start()
        mids = await submit_all(n)
        await wait_for(lambda: len(counts(sink, mids)) >= 2, timeout=20, interval=0.005)
        await asyncio.sleep(0.05)  # some more are between their dot and the sink's reply
        n.kill9()
        await n.start()
        await wait_for(lambda: len(counts(sink, mids)) == N, timeout=20)
        await wait_settled(n)
        await asyncio.sleep(0.3)
        c = counts(sink, mids)
        assert sink.discarded > 0, "the kill came when no body was between its dot and the reply"
        assert sorted(c) == sorted(mids)  # none lost, the discarded ones included
        assert sum(v - 1 for v in c.values()) <= n.resent()
        assert set(n.states()) == {"delivered"}
    finally:
        n.stop()
        await sink.stop()
