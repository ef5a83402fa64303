"""Domain claims, tried as an attacker with a second account on the same gateway (#13): several
accounts may claim a domain, the first to verify it owns it; an unverified claim blocks nobody,
reveals nothing, never signs and never authorizes mail."""

from __future__ import annotations

import dkim
import sqlalchemy as sa

from relay.store import new_id, utcnow
from relay.store import models as m
from tests.conftest import wait_for
from tests.support.api import Api, send_body, start_api, start_dns

OK, BAD_REQUEST, FORBIDDEN, CONFLICT = 200, 400, 403, 409
TAKEN = {"success": False, "error": "domain is already verified by another account"}
DOMAIN = "shop.example.net"


def claims(api: Api, name: str) -> dict[str, tuple[str, bool]]:
    """Stored claims on ``name``: id -> (account name, verified)."""
    with api.gw.store.sessions() as s:
        rows = s.execute(sa.select(m.Domain.id, m.Account.name, m.Domain.verified_at).join(m.Account)
                         .where(m.Domain.name == name)).all()
    return {i: (acc, at is not None) for i, acc, at in rows}


def keys_txt(view: dict) -> dict[str, str]:
    return {r["name"]: r["value"] for r in view["records"]}


async def test_a_claim_before_the_owner_verifies_blocks_nothing(gateway_factory, sink_factory):
    fake = await start_dns()
    api = await start_api(gateway_factory, sink_factory, dns={"nameservers": ["127.0.0.1"], "port": fake.port})
    api.gw.admin.create_account("mallory")
    mallory_key, _ = api.gw.admin.create_key("mallory", ["admin", "aliases", "send"])
    api.gw.admin.create_account("carol")
    carol_key, _ = api.gw.admin.create_key("carol", ["admin"])
    async with api.client as acme, api.as_key(mallory_key) as mallory, api.as_key(carol_key) as carol:
        # mallory claims the domain first: accepted, and acme is neither blocked nor told
        r = await mallory.post("/api/v1/domains", json={"domain": DOMAIN})
        assert r.status_code == OK, r.text
        m_dom = r.json()["domain"]
        r = await acme.post("/api/v1/domains", json={"domain": DOMAIN})
        assert r.status_code == OK, r.text
        a_dom = r.json()["domain"]
        assert a_dom["id"] != m_dom["id"] and a_dom["is_verified"] is False
        a_txt, m_txt = keys_txt(a_dom), keys_txt(m_dom)
        verify_name = f"_relay-verification.{DOMAIN}"
        assert a_txt[verify_name] != m_txt[verify_name]  # each claim has its own token and DKIM keys
        assert {v for k, v in a_txt.items() if "._domainkey." in k}.isdisjoint(
            v for k, v in m_txt.items() if "._domainkey." in k)
        # each account sees only its own claim
        assert [d["id"] for d in (await mallory.get("/api/v1/domains")).json()["domains"]] == [m_dom["id"]]
        assert (await mallory.get(f"/api/v1/domains/{a_dom['id']}")).status_code == 404

        # acme publishes its token; mallory's claim cannot verify on acme's record
        fake.txt[verify_name] = [a_txt[verify_name]]
        r = await mallory.post(f"/api/v1/domains/{m_dom['id']}/verify")
        assert r.status_code == BAD_REQUEST
        r = await acme.post(f"/api/v1/domains/{a_dom['id']}/verify")
        assert (r.status_code, r.json()["domain"]["is_verified"]) == (OK, True)
        assert claims(api, DOMAIN) == {a_dom["id"]: ("acme", True), m_dom["id"]: ("mallory", False)}

        # later, even with mallory's token in DNS too: 409, and the owner does not change
        fake.txt[verify_name] = [a_txt[verify_name], m_txt[verify_name]]
        r = await mallory.post(f"/api/v1/domains/{m_dom['id']}/verify")
        assert (r.status_code, r.json()) == (CONFLICT, TAKEN)
        assert claims(api, DOMAIN) == {a_dom["id"]: ("acme", True), m_dom["id"]: ("mallory", False)}
        # a third account's new claim: 409 that names no account; nothing stored
        r = await carol.post("/api/v1/domains", json={"domain": DOMAIN.upper()})
        assert (r.status_code, r.json()) == (CONFLICT, TAKEN)
        assert "acme" not in r.text
        assert len(claims(api, DOMAIN)) == 2

        # mallory's unverified claim carries no alias; acme's verified one does
        r = await mallory.post("/api/v1/aliases", json={"email": f"ceo@{DOMAIN}"})
        assert (r.status_code, r.json()["details"]["fieldErrors"]) == (
            BAD_REQUEST, {"email": [f"'{DOMAIN}' is not a verified domain of account 'mallory'"]})
        assert api.gw.store.directory.find_alias(f"ceo@{DOMAIN}") is None
        r = await acme.post("/api/v1/aliases", json={"email": f"ceo@{DOMAIN}"})
        assert r.status_code == OK, r.text
        api.gw.admin.verify_alias(email=f"ceo@{DOMAIN}")
        api.gw.pipeline.invalidate()

        # acme's mail from the domain is signed with acme's keys, not mallory's
        r = await acme.post("/api/v1/send", json=send_body(api.p, **{"from": {"email": f"ceo@{DOMAIN}"}}))
        assert r.status_code == OK, r.text
        await wait_for(lambda: any(x.mail_from == f"ceo@{DOMAIN}" for x in api.sink.received))
        data = next(x for x in api.sink.received if x.mail_from == f"ceo@{DOMAIN}").data

        def dns_of(txt: dict[str, str]):
            return lambda name, timeout=5: txt.get(name.decode().rstrip("."), "").encode()

        assert dkim.verify(data, dnsfunc=dns_of(a_txt)) is True
        assert dkim.verify(data, dnsfunc=dns_of(m_txt)) is False

        # acme may drop the domain later; mallory may remove its own dead claim at any time
        r = await mallory.delete(f"/api/v1/domains/{m_dom['id']}")
        assert r.status_code == OK, r.text
        assert claims(api, DOMAIN) == {a_dom["id"]: ("acme", True)}


async def test_an_unverified_claim_never_signs_nor_authorizes(api: Api):
    """mallory's claims (refused on acme's verified domain, taken on a domain nobody verified) neither
    sign nor let mallory send as those domains, even with verified alias rows planted in the store."""
    gw = api.gw
    gw.admin.create_account("mallory")
    key, _ = gw.admin.create_key("mallory", ["admin", "aliases", "send"])
    mallory = gw.store.directory.get_account("mallory")
    async with api.as_key(key) as c:
        r = await c.post("/api/v1/domains", json={"domain": "example.com"})  # acme verified it already
        assert (r.status_code, r.json()) == (CONFLICT, TAKEN)
        r = await c.post("/api/v1/domains", json={"domain": "nobody.example.org"})  # nobody verified it
        assert r.status_code == OK
        # an alias row on those domains, as stale or forged data would leave it: still refused
        with gw.store.sessions.begin() as s:
            for address in ("ceo@example.com", "ceo@nobody.example.org"):
                s.add(m.Alias(id=new_id("ali"), account_id=mallory.id, email=address, ip_pool="default",
                              is_default=False, verified_at=utcnow(), created_at=utcnow()))
        gw.pipeline.invalidate()
        before = api.submitted()
        for address in ("ceo@example.com", "ceo@nobody.example.org"):
            r = await c.post("/api/v1/send", json=send_body(api.p, **{"from": {"email": address}}))
            assert r.status_code == FORBIDDEN, (address, r.text)
        assert api.submitted() == before
    # signing: only the owner's claim, only for the owner's account
    raw = b"From: ceo@example.com\r\nTo: r@dest.org\r\nSubject: x\r\n\r\nbody\r\n"
    assert await gw.pipeline.sign("example.com", raw, mallory.id) == raw
    assert await gw.pipeline.sign("nobody.example.org", raw, mallory.id) == raw
    assert (await gw.pipeline.sign("example.com", raw, gw.store.directory.get_account("acme").id)).startswith(
        b"DKIM-Signature:")
