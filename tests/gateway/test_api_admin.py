"""Aliases, SMTP pools, domains (DKIM rotation), suppressions, keys and usage over real HTTP."""

from __future__ import annotations

import datetime as dt

import dkim

from relay.store import utcnow
from tests.support.api import Api, send_body, start_api, start_dns
from tests.conftest import free_port, wait_for

OK, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT = 200, 400, 401, 403, 404, 409


# -- aliases ---------------------------------------------------------------------------------------------
async def test_alias_lifecycle(api: Api):
    c = api.client
    r = await c.post("/api/v1/aliases", json={"email": "news@other.org"})
    assert (r.status_code, r.json()) == (BAD_REQUEST, {
        "success": False, "error": "Validation failed",
        "details": {"fieldErrors": {"email": ["'other.org' is not a verified domain of account 'acme'"]}}})

    r = await c.post("/api/v1/aliases", json={"email": "marketing@example.com", "name": "Acme Marketing",
                                              "is_default": True, "ip_pool": "marketing"})
    assert r.status_code == OK, r.text
    alias = r.json()["alias"]
    assert {k: alias[k] for k in ("email", "name", "is_default", "is_verified", "ip_pool")} == {
        "email": "marketing@example.com", "name": "Acme Marketing", "is_default": True, "is_verified": False,
        "ip_pool": "marketing"}
    assert alias["id"].startswith("ali_")
    # the verification email goes through the alias's own pool, which has no upstream yet: said so
    assert r.json()["warning"].startswith("IP pool 'marketing' has no active upstream")
    api.gw.admin.add_upstream(name="mk", ip_pool="marketing", host="127.0.0.1", port=api.sink.port,
                              encryption="none")
    api.gw.load_upstreams()
    api.gw.scheduler.wake()
    await wait_for(lambda: any("marketing@example.com" in x.rcpt_tos for x in api.sink.received))  # verification

    r = await c.post("/api/v1/aliases", json={"email": "marketing@example.com"})
    assert r.status_code == CONFLICT and r.json()["success"] is False

    r = await c.patch(f"/api/v1/aliases/{alias['id']}", json={"email": "x@example.com"})
    assert (r.status_code, r.json()) == (BAD_REQUEST, {
        "success": False, "error": "Validation failed",
        "details": {"fieldErrors": {"email": ["Only name, is_default and ip_pool can be changed after creation"]}}})

    app_alias = api.gw.store.directory.find_alias(api.p.alias)
    r = await c.patch(f"/api/v1/aliases/{app_alias.id}", json={"is_default": True, "ip_pool": "transactional"})
    assert r.status_code == OK, r.text
    assert (r.json()["alias"]["is_default"], r.json()["alias"]["ip_pool"]) == (True, "transactional")
    listed = (await c.get("/api/v1/aliases")).json()["aliases"]
    assert [a["email"] for a in listed if a["is_default"]] == [api.p.alias]  # only one default

    r = await c.get("/api/v1/aliases/ali_nope")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "Alias not found"})

    # the only verified alias cannot go; the unverified one can
    r = await c.delete(f"/api/v1/aliases/{app_alias.id}")
    assert (r.status_code, r.json()) == (FORBIDDEN, {"success": False,
                                                      "error": "Cannot delete the only remaining verified alias"})
    r = await c.delete(f"/api/v1/aliases/{alias['id']}")
    assert (r.status_code, r.json()) == (OK, {"success": True})
    assert (await c.get(f"/api/v1/aliases/{alias['id']}")).status_code == NOT_FOUND


async def test_alias_with_queued_mail_cannot_be_deleted(api: Api):
    c = api.client
    api.gw.admin.add_alias("tx@example.com", account=api.p.account, ip_pool="nowhere")
    alias = api.gw.admin.verify_alias(email="tx@example.com")
    api.gw.pipeline.invalidate()
    r = await c.post("/api/v1/send", json=send_body(api.p, **{"from": {"email": "tx@example.com"}}))
    assert r.status_code == 202, r.text  # the pool has no upstream: queued
    r = await c.delete(f"/api/v1/aliases/{alias.id}")
    assert r.status_code == CONFLICT
    assert r.json() == {"success": False, "error": "Alias is used by 1 queued recipient(s): wait for their delivery "
                                                   "or remove them from the queue first"}


async def test_alias_routes_need_the_aliases_scope(api: Api):
    key, _ = api.gw.admin.create_key(api.p.account, ["send"])
    async with api.as_key(key) as send_only:
        r = await send_only.get("/api/v1/aliases")
    assert (r.status_code, r.json()) == (FORBIDDEN, {
        "success": False, "error": "This API key lacks the required scope (one of: admin, aliases)"})
    key, _ = api.gw.admin.create_key(api.p.account, ["aliases"])
    async with api.as_key(key) as aliases_only:
        assert (await aliases_only.get("/api/v1/aliases")).status_code == OK
        assert (await aliases_only.get("/api/v1/smtp-pools")).status_code == FORBIDDEN


# -- SMTP pools -------------------------------------------------------------------------------------------
async def test_smtp_pool_lifecycle_and_connection_test(api: Api):
    c = api.client
    body = {"name": "Amazon SES — us-east-1", "host": "127.0.0.1", "port": api.sink.port, "username": "AKIAEXAMPLE",
            "password": "ses-smtp-password-42", "encryption": "none"}
    r = await c.post("/api/v1/smtp-pools", json=body)
    assert r.status_code == OK, r.text
    pool = r.json()
    assert pool["id"].startswith("smtp_") and pool["name"] == body["name"] and pool["has_password"] is True
    assert "password" not in pool and "ses-smtp-password-42" not in r.text
    listed = (await c.get("/api/v1/smtp-pools")).json()
    assert isinstance(listed, list) and {p["name"] for p in listed} == {"sink", body["name"]}

    r = await c.patch(f"/api/v1/smtp-pools/{pool['id']}", json={"name": "ses", "weight": 3, "username": None})
    assert r.status_code == OK, r.text
    assert (r.json()["name"], r.json()["weight"], r.json()["username"]) == ("ses", 3, None)
    rec = api.gw.store.directory.get_upstream(pool["id"])
    assert api.gw.admin.upstream_password(rec) == "ses-smtp-password-42"  # re-encrypted under the new name

    r = await c.post(f"/api/v1/smtp-pools/{pool['id']}/test")
    assert r.status_code == OK and r.json()["success"] is True
    assert r.json()["message"] == "SMTP connection successful" and isinstance(r.json()["latencyMs"], int)

    closed = free_port()
    r = await c.patch(f"/api/v1/smtp-pools/{pool['id']}", json={"port": closed})
    r = await c.post(f"/api/v1/smtp-pools/{pool['id']}/test")
    res = r.json()
    assert (r.status_code, res["success"], res["message"]) == (OK, False, "SMTP connection failed")
    assert str(closed) in res["error"]

    r = await c.patch(f"/api/v1/smtp-pools/{pool['id']}", json={"encryption": "starttls"})
    assert r.status_code == BAD_REQUEST and "encryption" in r.json()["details"]["fieldErrors"]
    assert (await c.delete(f"/api/v1/smtp-pools/{pool['id']}")).json() == {"success": True}
    r = await c.post(f"/api/v1/smtp-pools/{pool['id']}/test")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "SMTP pool not found"})


# -- domains and DKIM rotation ----------------------------------------------------------------------------
async def test_domain_verification_and_dkim_rotation(gateway_factory, sink_factory):
    fake = await start_dns()
    a = await start_api(gateway_factory, sink_factory, dns={"nameservers": ["127.0.0.1"], "port": fake.port})
    async with a.client:
        c = a.client
        r = await c.post("/api/v1/domains", json={"domain": "Shop.Example.NET"})
        assert r.status_code == OK, r.text
        dom = r.json()["domain"]
        assert (dom["domain"], dom["is_verified"]) == ("shop.example.net", False)
        records = {x["name"]: x for x in dom["records"]}
        dkim_names = sorted(n for n in records if "._domainkey." in n)
        assert len(dkim_names) == 2 and all(records[n]["value"].startswith("v=DKIM1;") for n in dkim_names)
        verify = records["_relay-verification.shop.example.net"]["value"]
        assert records["shop.example.net"]["value"].startswith("v=spf1 ")
        assert "PRIVATE KEY" not in r.text

        r = await c.post(f"/api/v1/domains/{dom['id']}/verify")
        assert r.status_code == BAD_REQUEST and "domain" in r.json()["details"]["fieldErrors"]
        fake.txt["_relay-verification.shop.example.net"] = [verify]
        r = await c.post(f"/api/v1/domains/{dom['id']}/verify")
        assert r.status_code == OK and r.json()["domain"]["is_verified"] is True

        r = await c.post("/api/v1/domains", json={"domain": "shop.example.net"})
        assert r.status_code == CONFLICT
        r = await c.delete("/api/v1/domains/dom_nope")
        assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "Domain not found"})

        # rotation on the provisioned domain: new selectors are published first and sign only once seen
        example = a.gw.store.directory.get_domain("example.com")
        old = {k.selector for k in example.keys}
        r = await c.post(f"/api/v1/domains/{example.id}/dkim/rotate")
        assert r.status_code == OK, r.text
        keys = {k["selector"]: k["status"] for k in r.json()["domain"]["dkim"]}
        new = {s for s, st in keys.items() if st == "pending"}
        assert len(new) == 2 and {keys[s] for s in old} == {"active"}
        published = {x["name"]: x["value"] for x in r.json()["domain"]["records"]}
        assert all(f"{s}._domainkey.example.com" in published for s in old | new)

        async def signed_with() -> set[str]:
            n = len(a.sink.received)
            assert (await c.post("/api/v1/send", json=send_body(a.p))).status_code == OK
            await wait_for(lambda: len(a.sink.received) > n)
            d = dkim.DKIM(a.sink.received[-1].data)
            return {d.verify_headerprep(i)[0][b"s"].decode() for i in range(2)}

        assert await signed_with() == old
        r = await c.post(f"/api/v1/domains/{example.id}/verify")  # nothing in DNS yet: no switch
        assert {k["selector"] for k in r.json()["domain"]["dkim"] if k["status"] == "pending"} == new
        for s in new:
            fake.txt[f"{s}._domainkey.example.com"] = [published[f"{s}._domainkey.example.com"]]
        from relay.services import housekeeping as api_tasks

        assert await api_tasks.check_rotations(a.gw) == 1  # what the gateway runs every minute
        assert await signed_with() == new
        dkim_now = {k["selector"]: k for k in (await c.get(f"/api/v1/domains/{example.id}")).json()["domain"]["dkim"]}
        assert {dkim_now[s]["status"] for s in old} == {"retiring"} and all(dkim_now[s]["retire_at"] for s in old)
        # after the grace period the old keys go
        later = utcnow() + a.gw.admin.dkim_grace + dt.timedelta(minutes=1)
        rec = a.gw.admin.check_dkim_rotation("example.com", now=later)
        assert {k.selector for k in rec.keys} == new


# -- suppressions --------------------------------------------------------------------------------------------
async def test_suppressions(api: Api):
    c = api.client
    r = await c.post("/api/v1/suppressions", json={"email": "Bounced@Dest.org", "reason": "hard_bounce",
                                                   "detail": "550 5.1.1 no such user"})
    assert r.status_code == OK, r.text
    assert {k: r.json()["suppression"][k] for k in ("email", "reason", "detail")} == {
        "email": "bounced@dest.org", "reason": "hard_bounce", "detail": "550 5.1.1 no such user"}
    r = await c.post("/api/v1/suppressions", json={"email": "x@dest.org", "reason": "bored"})
    assert r.status_code == BAD_REQUEST and "reason" in r.json()["details"]["fieldErrors"]
    listed = (await c.get("/api/v1/suppressions")).json()["suppressions"]
    assert [s["email"] for s in listed] == ["bounced@dest.org"]
    assert (await c.delete("/api/v1/suppressions/bounced@dest.org")).json() == {"success": True}
    r = await c.delete("/api/v1/suppressions/bounced@dest.org")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "Suppression not found"})
    await c.post("/api/v1/suppressions", json={"email": "again@dest.org"})
    r = await c.delete("/api/v1/suppressions", params={"email": "again@dest.org"})
    assert (r.status_code, r.json()) == (OK, {"success": True})
    assert (await c.get("/api/v1/suppressions")).json()["suppressions"] == []


# -- keys and usage -------------------------------------------------------------------------------------------
async def test_keys_are_shown_once_and_cannot_grant_more(api: Api):
    c = api.client
    r = await c.post("/api/v1/keys", json={"scopes": ["send"], "name": "ci"})
    assert r.status_code == OK, r.text
    created = r.json()["api_key"]
    assert created["scopes"] == ["send"] and created["key"].startswith(created["id"] + "_")
    listed = await c.get("/api/v1/keys")
    assert created["key"] not in listed.text and created["id"] in listed.text

    async with api.as_key(created["key"]) as new_key:
        assert (await new_key.post("/api/v1/send", json=send_body(api.p))).status_code == OK
    r = await c.delete(f"/api/v1/keys/{created['id']}")
    assert r.json() == {"success": True}
    async with api.as_key(created["key"]) as revoked:
        r = await revoked.post("/api/v1/send", json=send_body(api.p))
    assert (r.status_code, r.json()) == (UNAUTHORIZED, {"success": False, "error": "Invalid API key"})

    limited, _ = api.gw.admin.create_key(api.p.account, ["admin", "send:transactional"])
    async with api.as_key(limited) as lim:
        r = await lim.post("/api/v1/keys", json={"scopes": ["send"]})
        assert (r.status_code, r.json()) == (FORBIDDEN, {
            "success": False, "error": "this key cannot grant scopes it does not have: send"})
        r = await lim.post("/api/v1/keys", json={"scopes": ["send:transactional"]})
        assert r.status_code == OK
        r = await lim.post("/api/v1/keys", json={"scopes": ["root"]})
        assert r.status_code == FORBIDDEN
    r = await c.delete("/api/v1/keys/rk_00000000")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "API key not found"})


async def test_usage_without_quota_policy(api: Api):
    assert (await api.client.post("/api/v1/send", json=send_body(api.p))).status_code == OK
    r = await api.client.get("/api/v1/usage")
    assert r.status_code == OK
    body = r.json()
    assert body["success"] is True and body["enforced"] is False and body["limits"] == []
    assert body["sent_today"]["messages"] == 1
