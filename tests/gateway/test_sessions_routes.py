"""The origin check (CSRF) on cookie-authenticated changes, and seed 001's session routes
(``/api/smtp-pools``): their shapes, the cookie only, and another account's pools out of reach."""

from __future__ import annotations

import httpx

from relay.api.session import COOKIE
from relay.store import models as m
from tests.conftest import provision
from tests.support.api import Api
from tests.support.sessions import add_user, as_user, browser, login_token

OK, UNAUTHORIZED, FORBIDDEN, NOT_FOUND = 200, 401, 403, 404
CROSS_SITE = {"success": False, "error": "Cross-site request refused"}
SEED_FIELDS = {"id", "name", "host", "port", "username", "encryption", "is_active", "created_at"}
EVIL = "https://evil.example"


def pool_body(api: Api, **over) -> dict:
    body = {"name": "acme relay", "host": "127.0.0.1", "port": api.sink.port, "username": "relay-user",
            "password": "upstream-secret-pw", "encryption": "none"}
    body.update(over)
    return body


async def test_a_cross_site_change_with_the_cookie_is_refused_and_changes_nothing(api: Api):
    await add_user(api, "owner@acme.test", "owner")
    token = await login_token(api, "owner@acme.test")
    sup = {"email": "csrf@dest.org"}
    for headers in ({"Origin": EVIL}, {"Referer": EVIL + "/page"}, {"Origin": "null"}, {},
                    {"Origin": EVIL, "Referer": api.base + "/"}):
        async with browser(api, token, origin=None) as c:
            for method, path, body in (("POST", "/api/v1/suppressions", sup), ("POST", "/api/smtp-pools", pool_body(api)),
                                       ("DELETE", "/api/v1/sandbox", None), ("POST", "/login", None),
                                       ("POST", "/api/auth/logout", None)):
                r = await c.request(method, path, json=body, headers=headers)
                assert (r.status_code, r.json()) == (FORBIDDEN, CROSS_SITE), (headers, method, path, r.text)
    assert api.count(m.Suppression) == 0 and api.count(m.UserSession) == 1
    assert all(u.account_id is None for u in api.gw.store.directory.list_upstreams())
    async with browser(api, token, origin=None) as c:
        r = await c.post("/api/v1/suppressions", json=sup, headers={"Referer": api.base + "/suppressions"})
        assert r.status_code == OK, r.text  # the gateway's own page, by Referer
        r = await c.post("/api/v1/suppressions", json={"email": "b@dest.org"}, headers={"Origin": api.base})
        assert r.status_code == OK, r.text
    public = api.gw.settings.public_url
    assert public == api.base
    async with httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {api.p.key}"}) as c:
        r = await c.post("/api/v1/suppressions", json={"email": "c@dest.org"})  # a key, no Origin: no browser
        assert r.status_code == OK, r.text
    assert api.count(m.Suppression) == 3


async def test_a_foreign_origin_cannot_log_a_browser_in_but_curl_can(api: Api):
    await add_user(api, "owner@acme.test", "owner")
    creds = {"email": "owner@acme.test", "password": "correct horse battery staple"}
    async with httpx.AsyncClient(base_url=api.base) as c:
        r = await c.post("/api/auth/login", json=creds, headers={"Origin": EVIL})
        assert (r.status_code, r.json()) == (FORBIDDEN, CROSS_SITE) and "set-cookie" not in r.headers
        assert api.count(m.UserSession) == 0
        assert (await c.post("/api/auth/login", json=creds)).status_code == OK  # curl: no Origin, no cookie
        r = await c.post("/api/auth/login", json=creds, headers={"Origin": api.base})  # with the first cookie
        assert r.status_code == OK
    assert api.count(m.UserSession) == 1  # one browser, one session: the first one ended


async def test_session_routes_have_the_seeds_shape_and_never_a_password(api: Api):
    async with await as_user(api, "admin@acme.test", "admin") as c:
        r = await c.post("/api/smtp-pools", json=pool_body(api))
        assert r.status_code == OK, r.text
        pool = r.json()
        assert set(pool) == SEED_FIELDS and pool["encryption"] == "none" and pool["is_active"] is True
        listed = await c.get("/api/smtp-pools")
        assert listed.status_code == OK and listed.json() == [pool]  # a bare array, acme's own only
        r = await c.patch(f"/api/smtp-pools/{pool['id']}", json={"name": "renamed", "password": "another-secret"})
        assert r.status_code == OK and r.json()["name"] == "renamed" and set(r.json()) == SEED_FIELDS
        tested = await c.post(f"/api/smtp-pools/{pool['id']}/test")
        assert tested.status_code == OK, tested.text
        # the sink offers no AUTH: a classified failure in the seed's shape, the peer's words not echoed
        assert set(tested.json()) == {"success", "message", "latencyMs", "error"}
        assert tested.json()["success"] is False and tested.json()["error"].startswith("auth:")
        for text in (r.text, listed.text, tested.text):
            assert "secret" not in text and "password" not in text
        assert (await c.delete(f"/api/smtp-pools/{pool['id']}")).json() == {"success": True}
        assert (await c.get("/api/smtp-pools")).json() == []
    async with httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {api.p.key}"}) as c:
        r = await c.get("/api/smtp-pools")  # a key is for /api/v1; the session routes take the cookie only
        assert (r.status_code, r.json()["success"]) == (UNAUTHORIZED, False)


async def test_a_member_sees_the_pools_and_changes_none(api: Api):
    own = api.gw.admin.add_upstream(name="acme relay", ip_pool="acme-own", host="127.0.0.1", port=api.sink.port,
                                    encryption="none", account="acme")
    async with await as_user(api, "member@acme.test", "member") as c:
        assert [p["id"] for p in (await c.get("/api/smtp-pools")).json()] == [own.id]
        assert (await c.get(f"/api/v1/smtp-pools/{own.id}")).status_code == OK
        for method, path, body in (("POST", "/api/smtp-pools", pool_body(api, name="x")),
                                   ("PATCH", f"/api/smtp-pools/{own.id}", {"name": "x"}),
                                   ("DELETE", f"/api/smtp-pools/{own.id}", None),
                                   ("POST", f"/api/smtp-pools/{own.id}/test", None),
                                   ("PATCH", f"/api/v1/smtp-pools/{own.id}", {"name": "x"}),
                                   ("DELETE", "/api/v1/sandbox", None), ("POST", "/api/v1/keys", {"scopes": ["send"]})):
            r = await c.request(method, path, json=body)
            assert r.status_code == FORBIDDEN, (method, path, r.text)
    assert [u.name for u in api.gw.store.directory.list_upstreams() if u.account_id] == ["acme relay"]
    assert len(api.gw.store.directory.list_api_keys("acme")) == 1


async def test_another_accounts_user_never_reaches_acmes_pools(api: Api):
    own = api.gw.admin.add_upstream(name="acme relay", ip_pool="acme-own", host="127.0.0.1", port=api.sink.port,
                                    encryption="none", account="acme")
    provision(api.gw, api.sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    async with await as_user(api, "owner@globex.test", "owner", account="globex") as c:
        listed = await c.get("/api/smtp-pools")
        assert listed.status_code == OK and listed.json() == []
        assert own.id not in (await c.get("/api/v1/smtp-pools")).text
        for method, path, body in (("PATCH", f"/api/smtp-pools/{own.id}", {"name": "taken"}),
                                   ("DELETE", f"/api/smtp-pools/{own.id}", None),
                                   ("POST", f"/api/smtp-pools/{own.id}/test", None),
                                   ("GET", f"/api/v1/smtp-pools/{own.id}", None),
                                   ("PATCH", f"/api/v1/smtp-pools/{own.id}", {"name": "taken"}),
                                   ("DELETE", f"/api/v1/smtp-pools/{own.id}", None)):
            r = await c.request(method, path, json=body)
            assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "SMTP pool not found"}), \
                (method, path, r.text)
        r = await c.post("/api/smtp-pools", json=pool_body(api, ip_pool="acme-own"))  # into acme's IP pool
        assert r.status_code in (FORBIDDEN, NOT_FOUND, 409), r.text
    after = api.gw.store.directory.get_upstream(own.id)
    assert (after.name, after.ip_pool, after.account_id) == ("acme relay", "acme-own", own.account_id)
    assert [u.id for u in api.gw.store.directory.list_upstreams() if u.ip_pool == "acme-own"] == [own.id]


async def test_a_planted_sibling_cookie_does_not_hide_the_session_from_the_origin_check(api: Api):
    """A same-site page (another port of the host, a sibling subdomain) can plant cookies that Python's
    strict ``http.cookies`` gives up on (``expires=x``, ``a="b``, a name with a space), while the routes'
    parser still finds the session in the same header: the check must read it as the routes do, so a
    change without Origin or Referer stays refused. Two Cookie headers and a lower-case or unusual
    method do not slip past it either."""
    await add_user(api, "owner@acme.test", "owner")
    token = await login_token(api, "owner@acme.test")
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        for planted in ("expires=x", 'a="b', "a b=c", "$Version=1", "x=[1]"):
            r = await c.post("/api/v1/suppressions", json={"email": "csrf@dest.org"},
                             headers={"Cookie": f"{planted}; {COOKIE}={token}"})
            assert (r.status_code, r.json()) == (FORBIDDEN, CROSS_SITE), (planted, r.text)
        r = await c.request("POST", "/api/v1/suppressions", json={"email": "csrf@dest.org"},
                            headers=[("Cookie", "other=1"), ("Cookie", f"{COOKIE}={token}")])
        assert (r.status_code, r.json()) == (FORBIDDEN, CROSS_SITE), r.text
        for method in ("post", "PROPFIND"):
            r = await c.request(method, "/api/v1/suppressions", headers={"Cookie": f"{COOKIE}={token}",
                                                                         "Origin": EVIL})
            assert (r.status_code, r.json()) == (FORBIDDEN, CROSS_SITE), (method, r.text)
    assert api.count(m.Suppression) == 0
