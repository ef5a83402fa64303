"""The dashboard over real HTTP on a running gateway: login, every page, escaping, security headers,
members who only look, the CSRF field, every page's forms, the CSV import and export, the one-time
password link (tenant isolation: test_tenant_isolation_pages.py)."""

from __future__ import annotations

import re

import pytest

from policies.quota_rules import parse_warmup
from policies.quota_store import QuotaStore
from relay.store import models as m
from tests.conftest import provision, wait_for
from tests.support.api import Api, send_body, start_api
from tests.support.dashboard import PASSWORD, Browser

PAGES = ("/", "/messages", "/aliases", "/domains", "/smtp-pools", "/suppressions", "/keys", "/webhooks", "/usage",
         "/users")
EVIL = "<script>alert(1)</script>"


@pytest.fixture
async def dash(gateway_factory, sink_factory):
    """acme with an owner and a member; globex with an owner; a message of acme with an evil subject."""
    a = await start_api(gateway_factory, sink_factory)
    provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    for account, email, role in (("acme", "owner@acme.test", "owner"), ("acme", "member@acme.test", "member"),
                                 ("globex", "owner@globex.test", "owner")):
        await a.gw.users.add(account, email, role, PASSWORD)
    async with a.client:
        r = await a.client.post("/api/v1/send", json=send_body(a.p, subject=f"Hi {EVIL}", tags=["t-tag"]))
        assert r.status_code == 200, r.text
        a.message_id = r.json()["message_id"]  # type: ignore[attr-defined]
        await wait_for(lambda: a.sink.received)
        yield a


def browser(a: Api) -> Browser:
    return Browser(a.base)


async def test_pages_need_a_login_and_carry_the_security_headers(dash: Api):
    b = browser(dash)
    for path in PAGES:
        r = await b.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = await b.get("/login")
    assert r.status_code == 200 and 'name="password"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"
    assert "https://" not in r.text and "http://" not in r.text.replace('http://www.w3.org', '')  # nothing external
    css = await b.get("/static/app.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert (await b.get("/static/app.js")).status_code == 200


async def test_a_wrong_password_shows_the_form_again_with_401(dash: Api):
    b = browser(dash)
    r = await b.login("owner@acme.test", "wrong password!")
    assert r.status_code == 401 and "Invalid email or password" in r.text
    assert "sb-access-token" not in r.headers.get("set-cookie", "")


async def test_the_owner_sees_every_page_and_signs_out(dash: Api):
    b = browser(dash)
    r = await b.login("owner@acme.test")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=lax" in r.headers["set-cookie"].lower()
    for path in PAGES:
        r = await b.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["cache-control"] == "no-store"
        assert "owner@acme.test" in r.text
    overview = (await b.get("/")).text
    assert "<svg" in overview and "Upstream health" in overview
    r = await b.get(f"/messages/{dash.message_id}")
    assert r.status_code == 200 and "user@dest.org" in r.text and "DKIM-Signature" in r.text
    assert "delivered" in r.text
    r = await b.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/login?done=out"
    assert (await b.get("/")).status_code == 303  # the old cookie is refused
    assert (await b.http.get("/api/auth/me")).status_code == 401


async def test_what_an_attacker_wrote_is_escaped(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    r = await b.post("/aliases", {"email": "second@example.com", "name": EVIL})
    assert r.status_code == 303, r.text
    await b.post("/suppressions", {"email": "evil@dest.org", "detail": EVIL})
    for path in ("/aliases", "/messages", f"/messages/{dash.message_id}", "/suppressions",
                 f"/messages?q={EVIL}"):
        text = (await b.get(path)).text
        assert EVIL not in text, path
        assert "&lt;script&gt;" in text, path


async def test_search_finds_a_message_by_recipient_subject_id_and_tag(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    for q in ("user@dest", "Hi <script", dash.message_id, "t-tag"):
        r = await b.get("/messages", params={"q": q})
        assert dash.message_id in r.text, q
    r = await b.get("/messages", params={"q": "nobody-matches-this"})
    assert dash.message_id not in r.text
    r = await dash.client.post("/api/v1/send", json=send_body(dash.p, subject="Sandboxed"),
                               headers={"X-Relay-Sandbox": "true"})
    sandboxed = r.json()["message_id"]
    assert sandboxed not in (await b.get("/messages")).text
    r = await b.get("/messages", params={"sandbox": "true"})
    assert sandboxed in r.text and dash.message_id not in r.text


async def test_a_member_sees_but_cannot_change(dash: Api):
    b = browser(dash)
    await b.login("member@acme.test")
    for path in PAGES:
        r = await b.get(path)
        assert r.status_code == 200, path
        assert 'method="post" action="/' + path.strip("/") not in r.text or path == "/", path
    assert 'action="/aliases"' not in (await b.get("/aliases")).text
    before = dash.count(m.Alias), dash.count(m.ApiKey), dash.count(m.Suppression)
    for path, data in (("/aliases", {"email": "x@example.com"}), ("/keys", {"scope": "send"}),
                       ("/suppressions", {"email": "x@dest.org"}), ("/domains", {"domain": "member.test"}),
                       ("/users", {"email": "new@acme.test", "role": "member"})):
        r = await b.post(path, data)
        assert r.status_code == 403, path
    assert (dash.count(m.Alias), dash.count(m.ApiKey), dash.count(m.Suppression)) == before


async def test_a_form_without_its_csrf_field_or_from_another_origin_is_refused(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    before = dash.count(m.Suppression)
    r = await b.post("/suppressions", {"email": "x@dest.org"}, csrf=False)
    assert r.status_code == 403
    r = await b.http.post("/suppressions", data={"csrf": b.csrf, "email": "x@dest.org"},
                          headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert dash.count(m.Suppression) == before


async def test_a_key_is_shown_once(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    r = await b.post("/keys", {"name": "billing", "scope": ["send", "sandbox"]})
    assert r.status_code == 200
    key = re.search(r'id="new-key">([^<]+)<', r.text).group(1)
    ok = await dash.as_key(key).post("/api/v1/send", json=send_body(dash.p))
    assert ok.status_code == 200, ok.text
    listing = (await b.get("/keys")).text
    assert key not in listing and "billing" in listing


async def test_suppressions_import_and_export_csv(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    csv = "email,reason\none@dest.org,hard_bounce\ntwo@dest.org,\n"
    r = await b.http.post("/suppressions/import", data={"csrf": b.csrf, "reason": "manual"},
                          files={"file": ("list.csv", csv, "text/csv")}, headers={"Origin": b.base})
    assert r.status_code == 200 and "2 added" in r.text
    r = await b.http.post("/suppressions/import", data={"csrf": b.csrf}, headers={"Origin": b.base},
                          files={"file": ("bad.csv", "three@dest.org\nnot an address\n", "text/csv")})
    assert r.status_code == 400 and "Nothing imported" in r.text
    out = await b.get("/suppressions.csv")
    assert out.headers["content-type"].startswith("text/csv")
    assert "one@dest.org,hard_bounce" in out.text and "two@dest.org,manual" in out.text and "three@" not in out.text
    r = await b.post("/suppressions/remove", {"email": "one@dest.org"})
    assert r.status_code == 303
    assert "one@dest.org" not in (await b.get("/suppressions.csv")).text


async def test_a_user_added_on_the_page_sets_a_password_through_the_link(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    r = await b.post("/users", {"email": "new@acme.test", "role": "admin"})
    assert r.status_code == 200
    link = re.search(r'id="link">([^<]+)<', r.text).group(1)
    path = "/" + link.split("/", 3)[3]
    assert path.startswith("/set-password/")
    fresh = browser(dash)
    assert (await fresh.get(path)).status_code == 200
    r = await fresh.post(path, {"password": "short", "confirm": "short"}, csrf=False)
    assert r.status_code == 400
    r = await fresh.post(path, {"password": PASSWORD, "confirm": PASSWORD}, csrf=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?done=password"
    assert (await fresh.login("new@acme.test")).status_code == 303
    assert (await fresh.post(path, {"password": PASSWORD, "confirm": PASSWORD}, csrf=False)).status_code == 400


async def test_the_forms_of_every_page_change_through_the_services(dash: Api):
    b = browser(dash)
    await b.login("owner@acme.test")
    gw, d = dash.gw, dash.gw.store.directory
    # aliases: create, make default, remove
    assert (await b.post("/aliases", {"email": "two@example.com"})).status_code == 303
    two = d.find_alias("two@example.com")
    assert (await b.post(f"/aliases/{two.id}/default")).status_code == 303
    assert d.find_alias("two@example.com").is_default
    assert (await b.post(f"/aliases/{two.id}/delete")).status_code == 303
    assert d.find_alias("two@example.com") is None
    r = await b.post("/aliases", {"email": "x@not-ours.test"})  # the service's refusal, as the API answers it
    assert r.status_code in (400, 403, 404) and 'class="flash error"' in r.text
    # domains: add (the records to publish), DKIM rotation, a verification that finds no record yet
    r = await b.post("/domains", {"domain": "new.example"})
    assert r.status_code == 303
    domain_id = r.headers["location"].split("/")[2].split("?")[0]
    page = await b.get(r.headers["location"])
    assert "_relay-verification.new.example" in page.text and 'data-copy="value-1"' in page.text
    assert (await b.post(f"/domains/{domain_id}/rotate")).status_code == 303
    assert "pending" in (await b.get(f"/domains/{domain_id}")).text
    # SMTP pools: add, edit (the password kept when left empty), remove
    r = await b.post("/smtp-pools", {"name": "mine", "host": "127.0.0.1", "port": str(dash.sink.port),
                                     "encryption": "none", "password": "s3cret-pass", "is_active": "true"})
    assert r.status_code == 303, r.text
    pool = next(u for u in d.list_upstreams() if u.name == "mine")
    assert pool.ip_pool == "acme" and pool.account_id is not None and pool.password_enc
    edit = await b.get(f"/smtp-pools/{pool.id}")
    assert "s3cret-pass" not in edit.text and 'placeholder="unchanged"' in edit.text
    r = await b.post(f"/smtp-pools/{pool.id}", {"name": "mine 2", "host": "127.0.0.1", "port": str(dash.sink.port),
                                                "encryption": "none", "is_active": "true", "priority": "5"})
    assert r.status_code == 303, r.text
    saved = d.get_upstream(pool.id)
    assert (saved.name, saved.priority, gw.admin.upstream_password(saved)) == ("mine 2", 5, "s3cret-pass")
    r = await b.post("/smtp-pools", {"name": "bad", "host": "127.0.0.1", "port": "0", "encryption": "none"})
    assert r.status_code == 400 and "port" in r.text
    assert (await b.post(f"/smtp-pools/{pool.id}/delete")).status_code == 303
    # keys: revoke
    r = await b.post("/keys", {"scope": "send", "name": "to revoke"})
    key_id = next(k.id for k in d.list_api_keys("acme") if k.name == "to revoke")
    assert (await b.post(f"/keys/{key_id}/revoke")).status_code == 303
    assert next(k for k in d.list_api_keys("acme") if k.id == key_id).revoked
    # webhooks: add (the secret shown once), its deliveries page, remove
    r = await b.post("/webhooks", {"url": "http://127.0.0.1:9/hook", "event": ["delivered", "bounced"]})
    assert r.status_code == 200 and "whsec_" in r.text
    hook_id = re.search(r'href="/webhooks/(whk_[^"]+)"', r.text).group(1)
    assert "whsec_" not in (await b.get("/webhooks")).text
    assert (await b.get(f"/webhooks/{hook_id}")).status_code == 200
    assert (await b.post(f"/webhooks/{hook_id}/delete")).status_code == 303
    # users: reset a password (a new link), remove a user
    member = next(u for u in await gw.users.list(d.get_account("acme").id) if u.role == "member")
    r = await b.post(f"/users/{member.id}/reset")
    assert r.status_code == 200 and "/set-password/" in r.text
    assert (await b.post(f"/users/{member.id}/remove")).status_code == 303
    assert member.email not in (await b.get("/users")).text


async def test_usage_shows_the_warmup_of_a_pool_as_a_chart(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory, policies={"enabled": ["quota"], "quota": {"cache_ttl": 0}})
    QuotaStore(a.gw.store.sessions, a.gw.store.reads).set_limit(
        target="pool:default", kind="pool", account_id=None, subject="default", ip_pool="default",
        warmup=parse_warmup("1:50,2:100,5:2000"))
    await a.gw.users.add("acme", "owner@acme.test", "owner", PASSWORD)
    async with a.client:
        assert (await a.client.post("/api/v1/send", json=send_body(a.p))).status_code == 200
    b = browser(a)
    await b.login("owner@acme.test")
    r = await b.get("/usage")
    assert r.status_code == 200
    chart = r.text.split("Warm-up</h2>", 1)[1].split("</svg>", 1)[0]
    # the operator's pool is shared: its cap is shown, what other accounts sent there is not
    assert "<svg" in chart and "default, shared: day 1 of the warm-up (last listed day 5)" in chart
    # the whole schedule, each day's cap: where the warm-up stands and what comes
    assert all(f"day {d}: {cap} cap" in chart for d, cap in ((1, 50), (2, 100), (5, 2000)))
    assert "day 1: 50 a day" in r.text


async def test_the_password_forms_take_every_password_the_service_takes(dash: Api):
    """The service takes 10 to 1024 characters (the CLI's --password-stdin too); the forms capped at 1000
    (a JSON 400 instead of the page, and a longer password set at the CLI could never sign in here)
    and the set-password page asked the browser for 8."""
    longest = "p" * 1024
    rec, link = await dash.gw.users.add("acme", "long@acme.test", "admin", None)
    path = "/" + link.split("/", 3)[3]
    b = browser(dash)
    page = await b.get(path)
    assert 'minlength="10"' in page.text and 'maxlength="1024"' in page.text and 'minlength="8"' not in page.text
    r = await b.post(path, {"password": longest, "confirm": longest}, csrf=False)
    assert r.status_code == 303, r.text
    assert (await b.login("long@acme.test", longest)).status_code == 303
    assert (await b.get("/users")).status_code == 200
    r = await browser(dash).login("long@acme.test", longest + "p")  # over the limit: refused, no hash computed
    assert r.status_code in (400, 401)
