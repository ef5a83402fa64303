"""Webhook URLs as an attacker sets them: the gateway's own network is out of reach (when set and
again at each connection), and an account has a bounded number of webhooks."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from relay.ops.targets import is_public, literal
from tests.support.api import Api, Receiver, start_api

OK, BAD_REQUEST, CONFLICT = 200, 400, 409
INTERNAL = ["http://127.0.0.1:8025/", "http://localhost/", "http://[::1]/", "http://2130706433/",
            "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
            "http://0.0.0.0:25/", "http://0x7f.1/", "http://[64:ff9b::7f00:1]/", "http://192.168.1.1/"]


@pytest.fixture
async def strict(gateway_factory, sink_factory):
    """A gateway whose operator allows no private range (the default of a real install)."""
    a = await start_api(gateway_factory, sink_factory, security={"allow_targets": []},
                        webhooks={"max_per_account": 2})
    async with a.client:
        yield a


@pytest.mark.parametrize("url", INTERNAL)
async def test_internal_targets_are_refused_when_set(strict: Api, url: str):
    r = await strict.client.post("/api/v1/webhooks", json={"url": url})
    assert r.status_code == BAD_REQUEST, r.text
    assert r.json()["details"]["fieldErrors"] == {"url": [
        "must resolve to public addresses only (the operator can allow a range: [security] allow_targets)"]}
    assert strict.gw.store.webhook_outbox.webhooks.subscriptions() == {}


async def test_a_target_that_turns_internal_is_refused_at_connect_time(gateway_factory, sink_factory):
    api = await start_api(gateway_factory, sink_factory)  # the tests' operator allows 127.0.0.0/8
    receiver = Receiver()
    await receiver.start()
    try:
        async with api.client:
            r = await api.client.post("/api/v1/webhooks", json={"url": receiver.url})
            assert r.status_code == OK, r.text
            hook = r.json()["webhook"]["id"]
            api.gw.webhooks.allow_targets = ()  # what a rebinding name does: the same URL, now internal
            api.gw.webhooks.poll_interval = 0.05
            r = await api.client.post("/api/v1/suppressions", json={"email": "x@dest.org", "reason": "complaint"})
            assert r.status_code == OK, r.text

            async def failed() -> list:
                got = (await api.client.get(f"/api/v1/webhooks/{hook}/deliveries")).json()["deliveries"]
                return [d for d in got if d["attempts"] >= 1]

            deliveries: list = []
            for _ in range(200):
                deliveries = await failed()
                if deliveries:
                    break
                await asyncio.sleep(0.05)
            assert deliveries and "public addresses only" in deliveries[0]["last_error"]
            assert receiver.received == []  # nothing reached the internal address
    finally:
        await receiver.stop()


async def test_an_account_has_at_most_max_per_account_webhooks(strict: Api):
    for i in range(2):
        r = await strict.client.post("/api/v1/webhooks", json={"url": f"https://93.184.215.{i + 1}/hook"})
        assert r.status_code == OK, r.text
    r = await strict.client.post("/api/v1/webhooks", json={"url": "https://93.184.215.9/hook"})
    assert (r.status_code, r.json()["error"]) == (CONFLICT, "An account may have at most 2 webhooks")


@pytest.mark.parametrize("text,public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("100.64.0.1", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True), ("fe80::1", False),
    ("fc00::1", False), ("224.0.0.1", False), ("0.0.0.0", False), ("2002:7f00:1::", False)])
def test_is_public(text: str, public: bool):
    assert is_public(ipaddress.ip_address(text)) is public


def test_literals_in_every_form_a_resolver_takes():
    assert literal("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert literal("[::1]") == ipaddress.ip_address("::1")
    assert literal("example.com") is None
