"""Webhooks: signatures, retries until the receiver is up, durability across a restart."""

from __future__ import annotations

import asyncio

from relay.events import webhooks
from relay.gateway import Gateway
from tests.support.api import Api, Receiver, send_body, start_api
from tests.conftest import wait_for
from tests.gateway.test_policies import send as smtp_send
from tests.support.replies import OK as SMTP_OK, REFUSED as SMTP_SUPPRESSED

OK, BAD_REQUEST, NOT_FOUND = 200, 400, 404


def test_signature_round_trip():
    body = b'{"id":"evt_1","type":"delivered"}'
    header = webhooks.signature_header("whsec_abc", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert webhooks.verify("whsec_abc", header, body, now=1_700_000_100)
    assert not webhooks.verify("whsec_abc", header, body + b" ", now=1_700_000_100)
    assert not webhooks.verify("whsec_other", header, body, now=1_700_000_100)
    assert not webhooks.verify("whsec_abc", header, body, now=1_700_000_000 + webhooks.TOLERANCE + 1)
    assert not webhooks.verify("whsec_abc", "v1=deadbeef", body)


def fast(gw: Gateway) -> None:
    svc = gw.webhooks
    svc.retry_base, svc.retry_max, svc.poll_interval = 0.1, 0.3, 0.05
    svc._poke()


async def create_hook(api: Api, url: str, events: list[str] | None = None) -> dict:
    r = await api.client.post("/api/v1/webhooks", json={"url": url, **({"events": events} if events else {})})
    assert r.status_code == OK, r.text
    return r.json()["webhook"]


async def test_events_are_signed_and_delivered(api: Api):
    fast(api.gw)
    receiver = Receiver()
    await receiver.start()
    try:
        hook = await create_hook(api, receiver.url)
        assert hook["secret"].startswith("whsec_") and hook["events"] == [
            "bounced", "complained", "deferred", "delivered", "suppressed"]
        listed = await api.client.get("/api/v1/webhooks")
        assert hook["secret"] not in listed.text and listed.json()["webhooks"][0]["id"] == hook["id"]

        api.sink.rcpt_replies["nobody@dest.org"] = "550 5.1.1 No such user"
        await api.client.post("/api/v1/suppressions", json={"email": "gone@dest.org", "reason": "complaint"})
        r = await api.client.post("/api/v1/send", json=send_body(
            api.p, to=[{"email": "user@dest.org"}, {"email": "nobody@dest.org"}, {"email": "gone@dest.org"}],
            tags=["t1"], metadata={"order": "7"}))
        mid = r.json()["message_id"]
        await wait_for(lambda: {h.json["type"] for h in receiver.received} >= {
            "delivered", "bounced", "suppressed", "complained"}, timeout=10)
        for h in receiver.received:
            assert webhooks.verify(hook["secret"], h.headers["x-relay-signature"], h.body)
            assert h.headers["x-relay-event"] == h.json["type"] and h.headers["x-relay-delivery"] == h.json["id"]
        by_type = {h.json["type"]: h.json for h in receiver.received}
        delivered = by_type["delivered"]["data"]
        assert (delivered["message_id"], delivered["recipient"], delivered["tags"], delivered["metadata"]) == (
            mid, "user@dest.org", ["t1"], {"order": "7"})
        assert by_type["bounced"]["data"]["recipient"] == "nobody@dest.org"
        assert by_type["bounced"]["data"]["code"] == 550
        assert by_type["suppressed"]["data"] == {"message_id": mid, "recipient": "gone@dest.org",
                                                 "status": "suppressed", "tags": ["t1"], "metadata": {"order": "7"}}
        assert by_type["complained"]["data"]["recipient"] == "gone@dest.org"

        for _ in range(100):  # the receiver has them; the worker records the acknowledgements next
            deliveries = (await api.client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
            if deliveries and {d["state"] for d in deliveries} == {"delivered"}:
                break
            await asyncio.sleep(0.05)
        assert len(deliveries) == len(receiver.received) and {d["state"] for d in deliveries} == {"delivered"}
        assert (await api.client.delete(f"/api/v1/webhooks/{hook['id']}")).json() == {"success": True}
        assert (await api.client.get(f"/api/v1/webhooks/{hook['id']}")).status_code == NOT_FOUND
    finally:
        await receiver.stop()


async def test_smtp_reports_suppressed_recipients_as_http_does(api: Api):
    """The same rule behind both doors: SMTP answers the suppressed recipient 550 at RCPT (HTTP
    holds it back), and either way it is stored as ``suppressed`` and raises the ``suppressed``
    event; a transaction with no other recipient stores nothing and reports it without an id."""
    fast(api.gw)
    receiver = Receiver()
    await receiver.start()
    try:
        await create_hook(api, receiver.url, ["suppressed"])
        await api.client.post("/api/v1/suppressions", json={"email": "gone@dest.org", "reason": "unsubscribe"})
        replies, data = await smtp_send(api.gw, api.p, ["user@dest.org", "gone@dest.org"])
        assert [code for code, _ in replies] == [SMTP_OK, SMTP_SUPPRESSED] and data[0] == SMTP_OK
        mid = data[1].rsplit(" ", 1)[1]
        await wait_for(lambda: len(receiver.received) == 1, timeout=10)
        assert receiver.received[0].json["data"] == {"message_id": mid, "recipient": "gone@dest.org",
                                                     "status": "suppressed", "tags": [], "metadata": {}}
        r = await api.client.get(f"/api/v1/messages/{mid}")
        assert {x["email"]: x["status"] for x in r.json()["message"]["recipients"]}["gone@dest.org"] == "suppressed"
        assert [x.rcpt_tos for x in api.sink.received if x.mail_from == api.p.alias][-1:] == [["user@dest.org"]]

        before = api.submitted()
        replies, data = await smtp_send(api.gw, api.p, ["gone@dest.org"])
        assert [code for code, _ in replies] == [SMTP_SUPPRESSED] and data is None
        await wait_for(lambda: len(receiver.received) == 2, timeout=10)
        assert receiver.received[1].json["data"]["message_id"] is None
        assert api.submitted() == before
    finally:
        await receiver.stop()


async def test_a_receiver_that_is_down_gets_the_events_later(api: Api):
    fast(api.gw)
    receiver = Receiver()  # not started yet: connection refused
    hook = await create_hook(api, receiver.url, ["delivered"])
    await api.client.post("/api/v1/send", json=send_body(api.p))
    url = f"/api/v1/webhooks/{hook['id']}/deliveries"

    async def attempts() -> int:
        ds = (await api.client.get(url)).json()["deliveries"]
        return ds[0]["attempts"] if ds else 0

    for _ in range(200):
        if await attempts() >= 2:
            break
        await asyncio.sleep(0.05)
    d = (await api.client.get(url)).json()["deliveries"][0]
    assert d["state"] == "pending" and d["attempts"] >= 2 and "ConnectError" in d["last_error"]
    receiver.status = 503  # up, but not acknowledging: still retried
    await receiver.start()
    try:
        for _ in range(100):
            if (await api.client.get(url)).json()["deliveries"][0]["last_status"] == 503:
                break
            await asyncio.sleep(0.05)
        d = (await api.client.get(url)).json()["deliveries"][0]
        assert (d["state"], d["last_status"], d["last_error"]) == ("pending", 503, "HTTP 503")
        receiver.status = 200
        await wait_for(lambda: len(receiver.received) == 1, timeout=10)
        assert receiver.received[0].json["type"] == "delivered"
        for _ in range(100):
            d = (await api.client.get(url)).json()["deliveries"][0]
            if d["state"] == "delivered":
                break
            await asyncio.sleep(0.05)
        assert d["state"] == "delivered" and d["last_status"] == 200
    finally:
        await receiver.stop()


async def test_events_survive_a_restart(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    receiver = Receiver()
    async with a.client:
        fast(a.gw)
        await create_hook(a, receiver.url, ["delivered"])
        await a.client.post("/api/v1/send", json=send_body(a.p))
        await wait_for(lambda: any(x.mail_from == a.p.alias for x in a.sink.received))
        await asyncio.sleep(0.3)  # the event is queued, its first attempt failed
    settings = a.gw.settings
    await a.gw.stop(grace=1)
    assert receiver.received == []

    await receiver.start()  # the receiver is back; the gateway restarts and finds the stored event
    gw2 = Gateway(settings, env={})
    await gw2.start()
    try:
        await wait_for(lambda: len(receiver.received) == 1, timeout=10)
        assert receiver.received[0].json["type"] == "delivered"
        assert receiver.received[0].headers["x-relay-delivery"].startswith("evt_")
    finally:
        await receiver.stop()
        await gw2.stop(grace=1)


async def test_bad_webhook_requests(api: Api):
    r = await api.client.post("/api/v1/webhooks", json={"url": "ftp://example.org/x"})
    assert (r.status_code, r.json()) == (BAD_REQUEST, {"success": False, "error": "Validation failed", "details": {
        "fieldErrors": {"url": ["must be an http:// or https:// URL"]}}})
    r = await api.client.post("/api/v1/webhooks", json={"url": "https://example.org/x", "events": ["opened"]})
    assert r.status_code == BAD_REQUEST and "events" in r.json()["details"]["fieldErrors"]
    r = await api.client.get("/api/v1/webhooks/whk_nope/deliveries")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "Webhook not found"})
