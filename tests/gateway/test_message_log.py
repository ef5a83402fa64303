"""relay.services.messages.MessageLog on both stores: the search (queue id, Message-ID, recipient,
subject, tag), the header section, recipients per state and events per hour, one account only."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from relay.services.messages import HOURS, MessageLog
from relay.vocab import NotFound
from tests.conftest import provision, wait_for
from tests.support.api import POLICIES, send_body


async def test_search_headers_and_overview_of_one_account(db_url, gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(db_url, policies=POLICIES)
    p = provision(gw, sink.port, scopes=("send",))
    other = provision(gw, sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    sink.rcpt_replies["gone@dest.org"] = "550 5.1.1 No such user"
    async with httpx.AsyncClient(base_url="http://" + gw.settings.api.listen,
                                 headers={"Authorization": f"Bearer {p.key}"}) as c:
        r = await c.post("/api/v1/send", json=send_body(p, subject="Invoice 100%_done", tags=["billing"],
                                                         to=[{"email": "Ann@Dest.org"}, {"email": "gone@dest.org"}]))
        mid = r.json()["message_id"]
        await c.post("/api/v1/send", json=send_body(p, subject="Other", to=[{"email": "bob@dest.org"}]))
    async with httpx.AsyncClient(base_url="http://" + gw.settings.api.listen,
                                 headers={"Authorization": f"Bearer {other.key}"}) as c:
        await c.post("/api/v1/send", json=send_body(other, subject="Invoice of globex", tags=["billing"]))
    await wait_for(lambda: len(sink.received) >= 3)
    log = MessageLog(gw.runner, gw.store)
    acme = gw.store.directory.get_account("acme").id
    msg = await log.get(acme, mid)
    assert msg.header_message_id
    for query in (mid, msg.header_message_id, msg.header_message_id.strip("<>"), "ann@dest", "ANN@DEST.ORG",
                  "invoice 100%_", "billing"):
        found = [x.id for x in await log.page(acme, query=query)]
        assert found == [mid], query
    assert [x.subject for x in await log.page(acme, query="%")] == ["Invoice 100%_done"]  # LIKE wildcards escaped
    assert len(await log.page(acme)) == 2

    headers = await log.headers(acme, mid)
    assert headers.startswith("DKIM-Signature:") and "Subject: Invoice 100%_done" in headers
    assert "Hello there" not in headers  # the header section only
    globex = gw.store.directory.get_account("globex").id
    with pytest.raises(NotFound):
        await log.headers(globex, mid)
    with pytest.raises(NotFound):
        await log.get(globex, mid)

    async def finished() -> bool:
        states = (await log.overview(acme)).states
        return states["delivered"] == 2 and states["bounced"] == 1
    for _ in range(200):
        if await finished():
            break
        await asyncio.sleep(0.05)
    view = await log.overview(acme)
    assert view.states["delivered"] == 2 and view.states["bounced"] == 1 and view.states["queued"] == 0
    assert len(view.hours) == len(view.per_hour) == HOURS
    totals = {t: sum(h[t] for h in view.per_hour) for t in ("delivered", "deferred", "bounced")}
    assert totals == {"delivered": 2, "deferred": 0, "bounced": 1}
    assert sum(h["delivered"] for h in (await log.overview(globex)).per_hour) == 1
