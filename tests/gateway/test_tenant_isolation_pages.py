"""Tenant isolation of the dashboard's pages, generated from its routers: users of a second account
(an owner, an admin and a member) request every page route with the first account's objects in the
path. Each answer is 403 or 404 and names none of them, the lists never show them, and afterwards
the first account's owner sees exactly what they saw before. A new page route is covered without
editing this test; one whose path names a new kind of object fails until that kind gets a victim."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from relay.dashboard.app import ROUTERS
from tests.conftest import provision, wait_for
from tests.support.api import Api, send_body, start_api
from tests.support.dashboard import PASSWORD, Browser

PAGES = ("/", "/messages", "/aliases", "/domains", "/smtp-pools", "/suppressions", "/keys", "/webhooks", "/usage",
         "/users", "/suppressions.csv")
ATTACKERS = ("owner@globex.test", "admin@globex.test", "member@globex.test")


@pytest.fixture
async def dash(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    for account, email, role in (("acme", "owner@acme.test", "owner"), ("acme", "member@acme.test", "member"),
                                 *(("globex", e, e.split("@")[0]) for e in ATTACKERS)):
        await a.gw.users.add(account, email, role, PASSWORD)
    async with a.client:
        r = await a.client.post("/api/v1/send", json=send_body(a.p))
        assert r.status_code == 200, r.text
        a.message_id = r.json()["message_id"]  # type: ignore[attr-defined]
        await wait_for(lambda: a.sink.received)
        yield a


def page_routes() -> list[tuple[str, str, list[str]]]:
    out = []
    for router in ROUTERS:
        for route in router.routes:
            params = re.findall(r"{(\w+)}", route.path)
            if params and "token" not in params:
                out.extend((method, route.path, params) for method in sorted(route.methods))
    return out


async def victims_of(a: Api, b: Browser) -> dict[str, str]:
    gw = a.gw
    r = await a.client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    own = gw.admin.add_upstream(name="acme relay", ip_pool="acme-own", host="127.0.0.1", port=a.sink.port,
                                encryption="none", account="acme")
    with gw.store.sessions() as s:
        user_id = s.scalar(sa.text("SELECT id FROM users WHERE email = 'member@acme.test'"))
    return {"alias_id": gw.store.directory.find_alias(a.p.alias).id,
            "domain_id": gw.store.directory.get_domain(a.p.domain).id,
            "key_id": (await a.client.get("/api/v1/keys")).json()["keys"][0]["id"], "pool_id": own.id,
            "webhook_id": r.json()["webhook"]["id"], "message_id": a.message_id, "user_id": user_id}


async def snapshot(b: Browser, victims: dict[str, str]) -> dict[str, str]:
    out = {}
    for method, path, _ in page_routes():
        if method == "GET":
            r = await b.get(path.format(**victims))
            out[path] = re.sub(r'value="[0-9a-f]{40}"|\d\d:\d\d:\d\d|<div data-live.*', "", r.text, flags=re.S)
    return out


@pytest.mark.parametrize("who", ATTACKERS)
async def test_a_user_of_another_account_gets_404_on_every_page_of_the_first(dash: Api, who: str):
    owner = Browser(dash.base)
    await owner.login("owner@acme.test")
    victims = await victims_of(dash, owner)
    before = await snapshot(owner, victims)
    attacker = Browser(dash.base)
    await attacker.login(who)
    for path in PAGES:  # lists never show the first account's objects
        text = (await attacker.get(path)).text
        assert "globex" in text or path.endswith(".csv"), path
        leaked = [v for v in (*victims.values(), "app@example.com", "acme relay") if v in text]
        assert not leaked, (path, leaked)
    routes = page_routes()
    assert {p for _, p, _ in routes} >= {"/messages/{message_id}", "/domains/{domain_id}", "/smtp-pools/{pool_id}",
                                          "/webhooks/{webhook_id}", "/users/{user_id}/remove"}
    for method, path, params in routes:
        missing = [p for p in params if p not in victims]
        assert not missing, f"{method} {path}: no victim object for {missing}: add one to victims_of"
        url = path.format(**victims)
        r = await (attacker.get(url) if method == "GET" else attacker.post(url, {}))
        assert r.status_code in (403, 404), (method, path, r.status_code)
        assert not [v for v in victims.values() if v in r.text], (method, path)
    assert await snapshot(owner, victims) == before
