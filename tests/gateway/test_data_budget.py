"""The DATA memory budget (``smtp.data_memory_budget``): each DATA reserves ``max_message_size``
before its 354; a DATA that does not fit is ``452 4.3.1``; the reservation comes back however the
transfer ends (answered, client gone mid-DATA, timed out), on the block reader and on aiosmtpd's."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import port_of, provision, wait_for
from tests.support.rawsmtp import RawSMTP
from tests.support.replies import INSUFFICIENT, OK, START_DATA, TOO_BIG, UNAVAILABLE

SIZE = 100_000  # smtp.max_message_size: what one DATA reserves
HEAD = b"From: App <app@example.com>\r\nTo: someone@dest.org\r\nSubject: budget\r\n"
REST = b"\r\nbody\r\n.\r\n"


@pytest.fixture(params=["block reader", "aiosmtpd reader"])
async def env(request, gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_message_size": SIZE, "data_memory_budget": 3 * SIZE})
    if request.param == "aiosmtpd reader":
        gw.handlers["smtps"].session_options["decode_data"] = True  # BlockData hands over to SMTP.smtp_DATA
    p = provision(gw, sink.port)
    return gw, p


async def holding(gw, key: str) -> RawSMTP:
    """A transaction past its 354, with part of the message sent and the rest owed."""
    c = await RawSMTP.transaction(port_of(gw, "smtps"), key)
    assert (await c.cmd("DATA"))[0] == START_DATA
    await c.send(HEAD)
    return c


async def test_a_data_past_the_budget_is_452_until_a_reservation_comes_back(env):
    gw, p = env
    budget = gw.pipeline.data_budget
    holders = [await holding(gw, p.key) for _ in range(3)]
    assert budget.used == 3 * SIZE
    late = await RawSMTP.transaction(port_of(gw, "smtps"), p.key)
    assert await late.cmd("DATA") == (INSUFFICIENT, "4.3.1 Insufficient system storage, try again later")

    holders[0].drop()  # gone mid-DATA: its reservation comes back
    await wait_for(lambda: budget.used == 2 * SIZE)
    assert (await late.cmd("DATA"))[0] == START_DATA  # the same transaction, tried again
    await late.send(HEAD + REST)
    assert (await late.reply())[0] == OK
    for c in holders[1:]:
        await c.send(REST)
        assert (await c.reply())[0] == OK
    await wait_for(lambda: budget.used == 0)

    again = [await holding(gw, p.key) for _ in range(3)]  # the whole budget is there again
    for c in again:
        await c.send(REST)
        assert (await c.reply())[0] == OK
    for c in [*holders[1:], late, *again]:
        await c.close()
    await wait_for(lambda: budget.used == 0)
    assert len([m for m in gw.store.queue.list_messages() if m.source == "smtp"]) == 6  # none of the dropped one


async def test_a_transfer_over_the_size_limit_or_timed_out_gives_its_reservation_back(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_message_size": SIZE, "data_memory_budget": SIZE, "data_timeout": 0.5})
    p = provision(gw, sink.port)
    budget = gw.pipeline.data_budget
    big = await holding(gw, p.key)
    await big.send(b"x" * 998 + b"\r\n")
    for _ in range(SIZE // 10_000 + 1):
        await big.send((b"y" * 98 + b"\r\n") * 100)
    await big.send(b".\r\n")
    assert (await big.reply())[0] == TOO_BIG  # refused, nothing kept
    await wait_for(lambda: budget.used == 0)
    stalled = await holding(gw, p.key)  # the whole budget, then silence past smtp.data_timeout
    assert budget.used == SIZE
    code, _ = await asyncio.wait_for(stalled.reply(), 10)
    assert code == UNAVAILABLE  # 421 4.4.2 timeout exceeded
    await wait_for(lambda: budget.used == 0)
    ok = await holding(gw, p.key)
    await ok.send(REST)
    assert (await ok.reply())[0] == OK
    for c in (big, stalled, ok):
        await c.close()
