"""Dashboard users and sessions over real HTTP: login and its cookie, the lockout shared with AUTH,
logout, expiry, removal, the member's read-only role, the origin check (CSRF) and seed 001's session
routes. Each refusal asserts the exact status and that nothing changed in the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import httpx
import pytest
from argon2 import PasswordHasher
import sqlalchemy as sa

from relay.api.session import COOKIE
from relay.store import models as m
from relay.vocab import Forbidden, Invalid, utcnow
from tests.conftest import provision
from tests.gateway.test_secrets_leak import leaks, record_texts
from tests.support.api import Api, start_api
from tests.support.sessions import PASSWORD, add_user, browser, login_token

OK, UNAUTHORIZED, TOO_MANY = 200, 401, 429


def sessions(api: Api) -> int:
    return api.count(m.UserSession)


async def login(api: Api, email: str, password: str, source: str | None = None, **kw) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
    async with httpx.AsyncClient(base_url=api.base, timeout=30, transport=transport) as c:
        return await c.post("/api/auth/login", json={"email": email, "password": password}, **kw)


async def test_login_sets_an_httponly_lax_cookie_and_me_names_the_user(api: Api):
    user_id = await add_user(api, "Owner@Acme.test", "owner")
    r = await login(api, "owner@acme.test", PASSWORD)
    assert r.status_code == OK, r.text
    assert r.json()["success"] is True
    assert r.json()["user"] == {"id": user_id, "email": "owner@acme.test", "role": "owner", "account": "acme"}
    cookie = r.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert cookie.startswith(f"{COOKIE}=") and {"httponly", "path", "max-age"} <= attrs
    assert "samesite=lax" in cookie.lower() and "secure" not in attrs  # plain http: no Secure
    assert "password" not in r.text and "$argon2" not in r.text
    async with browser(api, r.cookies[COOKIE]) as c:
        me = await c.get("/api/auth/me")
        assert me.status_code == OK and me.json()["user"]["id"] == user_id
        assert (await c.get("/api/v1/keys")).status_code == OK  # the cookie works on /api/v1 too
    with api.gw.store.sessions() as s:  # stored: the token's hash, never the token
        assert s.scalar(sa.select(m.UserSession.token_hash)) != r.cookies[COOKIE]
        assert s.scalar(sa.select(m.User.password_hash)).startswith("$argon2")


async def test_the_cookie_is_secure_when_the_gateway_is_published_over_https(gateway_factory, sink_factory):
    api = await start_api(gateway_factory, sink_factory, api={"public_url": "https://relay.example.com"})
    async with api.client:
        await add_user(api, "owner@acme.test", "owner")
        r = await login(api, "owner@acme.test", PASSWORD, headers={"Origin": "https://relay.example.com"})
        assert r.status_code == OK, r.text
        assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}


async def test_wrong_password_and_unknown_email_are_the_same_401(api: Api):
    await add_user(api, "owner@acme.test", "owner")
    wrong = await login(api, "owner@acme.test", PASSWORD + "x")
    unknown = await login(api, "nobody@acme.test", PASSWORD)
    for r in (wrong, unknown):
        assert r.status_code == UNAUTHORIZED
        assert r.json() == {"success": False, "error": "Invalid email or password"}
        assert COOKIE not in r.headers.get("set-cookie", "")
    assert sessions(api) == 0
    async with browser(api, None) as c:
        assert (await c.get("/api/auth/me")).status_code == UNAUTHORIZED


async def test_the_sixth_wrong_try_from_one_address_is_locked_while_another_address_logs_in(gateway_factory,
                                                                                              sink_factory):
    api = await start_api(gateway_factory, sink_factory, smtp={"auth_max_failures": 5, "auth_lockout": 60})
    async with api.client:
        await add_user(api, "owner@acme.test", "owner")
        codes = [(await login(api, "owner@acme.test", "wrong password!", "127.0.0.2")).status_code for _ in range(5)]
        assert codes == [UNAUTHORIZED] * 5
        locked = await login(api, "owner@acme.test", PASSWORD, "127.0.0.2")  # right password, locked address
        assert locked.status_code == TOO_MANY and locked.json()["success"] is False
        assert (await login(api, "owner@acme.test", PASSWORD, "127.0.0.1")).status_code == OK
        assert sessions(api) == 1
        async with httpx.AsyncClient(base_url=api.base, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
                                     headers={"Authorization": f"Bearer {api.p.key}"}) as c:
            assert (await c.get("/api/v1/usage")).status_code == TOO_MANY  # the same throttle as keys


async def test_logout_deletes_the_session_and_the_old_cookie_gets_401_everywhere(api: Api):
    await add_user(api, "owner@acme.test", "owner")
    token = await login_token(api, "owner@acme.test")
    async with browser(api, token) as c:
        r = await c.post("/api/auth/logout")
        assert r.status_code == OK and r.json() == {"success": True}
        assert f'{COOKIE}=""' in r.headers["set-cookie"] or "max-age=0" in r.headers["set-cookie"].lower()
    assert sessions(api) == 0
    async with browser(api, token) as c:  # a client that kept the cookie
        for path in ("/api/auth/me", "/api/v1/keys", "/api/smtp-pools", "/api/v1/messages"):
            assert (await c.get(path)).status_code == UNAUTHORIZED, path
        assert (await c.post("/api/v1/suppressions", json={"email": "a@dest.org"})).status_code == UNAUTHORIZED
    assert api.count(m.Suppression) == 0


async def test_an_expired_session_gets_401_and_is_pruned(gateway_factory, sink_factory):
    now = [utcnow()]
    api = await start_api(gateway_factory, sink_factory, api={"session_ttl": "1h"}, clock=lambda: now[0])
    async with api.client:
        await add_user(api, "owner@acme.test", "owner")
        token = await login_token(api, "owner@acme.test")
        async with browser(api, token) as c:
            assert (await c.get("/api/auth/me")).status_code == OK
            now[0] += dt.timedelta(minutes=59)
            assert (await c.get("/api/auth/me")).status_code == OK
            now[0] += dt.timedelta(minutes=2)
            assert (await c.get("/api/auth/me")).status_code == UNAUTHORIZED
            assert (await c.get("/api/v1/keys")).status_code == UNAUTHORIZED
        assert sessions(api) == 0


async def test_a_removed_user_or_account_loses_its_sessions_at_once(api: Api):
    user_id = await add_user(api, "member@acme.test", "member")
    token = await login_token(api, "member@acme.test")
    await api.gw.users.remove(api.gw.store.directory.get_account("acme").id, user_id)
    async with browser(api, token) as c:
        assert (await c.get("/api/auth/me")).status_code == UNAUTHORIZED
    provision(api.gw, api.sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    await add_user(api, "owner@globex.test", "owner", account="globex")
    token = await login_token(api, "owner@globex.test")
    api.gw.admin.remove_account("globex")  # the foreign keys cascade: users, sessions
    async with browser(api, token) as c:
        assert (await c.get("/api/auth/me")).status_code == UNAUTHORIZED
    assert api.count(m.User) == 0 and sessions(api) == 0


async def test_roles_decide_who_manages_whom(api: Api):
    users = api.gw.users
    acme = api.gw.store.directory.get_account("acme").id
    owner_id = await add_user(api, "owner@acme.test", "owner")
    for email, role in (("admin@acme.test", "admin"), ("member@acme.test", "member")):
        await add_user(api, email, role)
    admin = await users.identity(await login_token(api, "admin@acme.test"))
    member = await users.identity(await login_token(api, "member@acme.test"))
    assert admin is not None and member is not None
    assert "operator" not in admin.identity.scopes and member.identity.scopes == frozenset({"read"})
    with pytest.raises(Forbidden):
        await users.add("acme", "owner2@acme.test", "owner", PASSWORD, by=admin)
    with pytest.raises(Forbidden):
        await users.remove(acme, owner_id, by=admin)
    with pytest.raises(Forbidden):
        await users.add("acme", "m2@acme.test", "member", PASSWORD, by=member)
    rec, _ = await users.add("acme", "m3@acme.test", "member", PASSWORD, by=admin)
    await users.remove(acme, rec.id, by=admin)
    assert {u.email for u in await users.list(acme)} == {"owner@acme.test", "admin@acme.test", "member@acme.test"}


async def test_a_set_password_link_works_once_and_then_the_user_logs_in(gateway_factory, sink_factory):
    now = [utcnow()]
    api = await start_api(gateway_factory, sink_factory, clock=lambda: now[0])
    async with api.client:
        users = api.gw.users
        rec, link = await users.add("acme", "new@acme.test", "admin", None)
        assert link is not None and link.startswith(api.gw.settings.public_url + "/set-password/")
        token = link.rsplit("/", 1)[1]
        assert (await login(api, "new@acme.test", "")).status_code == UNAUTHORIZED  # no password yet
        with pytest.raises(Invalid):
            await users.set_password(token, "short")
        await users.set_password(token, PASSWORD)
        assert (await login(api, "new@acme.test", PASSWORD)).status_code == OK
        with pytest.raises(Invalid) as used:
            await users.set_password(token, PASSWORD + "2")
        assert used.value.field == "token"
        again = await users.reset_password(rec.account_id, rec.id)  # old password and sessions end
        assert sessions(api) == 0 and (await login(api, "new@acme.test", PASSWORD)).status_code == UNAUTHORIZED
        now[0] += dt.timedelta(days=7, seconds=1)
        with pytest.raises(Invalid):
            await users.set_password(again.rsplit("/", 1)[1], PASSWORD)


async def test_no_password_token_link_or_hash_in_a_log_line_or_the_database(api: Api, caplog):
    caplog.set_level(logging.DEBUG)
    users = api.gw.users
    rec, link = await users.add("acme", "new@acme.test", "admin", None)
    link_token = link.rsplit("/", 1)[1]
    await users.set_password(link_token, PASSWORD)
    assert (await login(api, "new@acme.test", PASSWORD + "!")).status_code == UNAUTHORIZED
    token = await login_token(api, "new@acme.test")
    async with browser(api, token) as c:
        assert (await c.post("/api/auth/logout")).status_code == OK
    again = (await users.reset_password(rec.account_id, rec.id)).rsplit("/", 1)[1]
    with api.gw.store.sessions() as s:
        stored_hash = s.scalar(sa.select(m.User.password_hash).where(m.User.id == rec.id)) or "$argon2-was-reset"
    found = {"password": PASSWORD, "token": token, "link": link_token, "link2": again}
    # every logger but the test's own HTTP client (httpx/httpcore log the Set-Cookie they receive)
    texts = [t for r in caplog.records if not r.name.startswith(("httpx", "httpcore")) for t in record_texts(r)]
    assert any("logged in" in t for t in texts)
    assert not leaks(texts, found)
    assert "$argon2" not in "".join(texts) and stored_hash not in "".join(texts)
    db = b"".join(p.read_bytes() for p in api.gw.settings.data_dir.glob("relay.db*"))
    assert not [name for name, value in found.items() if value.encode() in db]


async def test_junk_set_password_links_cost_no_argon2_so_they_cannot_starve_logins(gateway_factory, sink_factory):
    """Anyone may POST /set-password/ANYTHING. Each such post used to hash the password (argon2, 64 MiB,
    at most two at once) before looking at the link: forty junk posts held a real login ~7 s, and a
    steady stream held it forever. A link that does not open (unknown, used or expired) is refused
    before any hash; a good one still sets the password."""
    now = [utcnow()]
    api = await start_api(gateway_factory, sink_factory, clock=lambda: now[0])
    async with api.client:
        users = api.gw.users
        rec, link = await users.add("acme", "new@acme.test", "admin", None)
        token = link.rsplit("/", 1)[1]
        hashed: list[int] = []

        class Counting(PasswordHasher):
            def hash(self, password, *, salt=None):  # type: ignore[no-untyped-def]
                hashed.append(1)
                return super().hash(password, salt=salt)

        users.hasher = Counting()
        async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
            for junk in ("guess", "x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B")):
                r = await c.post(f"/set-password/{junk}", data={"password": PASSWORD, "confirm": PASSWORD})
                assert r.status_code == 400 and "This link is invalid or has expired" in r.text, r.text
            assert hashed == []
            r = await c.post(f"/set-password/{token}", data={"password": PASSWORD, "confirm": PASSWORD})
            assert (r.status_code, r.headers["location"]) == (303, "/login?done=password")
            assert hashed == [1]
            r = await c.post(f"/set-password/{token}", data={"password": PASSWORD, "confirm": PASSWORD})  # used
            assert r.status_code == 400 and hashed == [1]
            again = (await users.reset_password(rec.account_id, rec.id)).rsplit("/", 1)[1]
            now[0] += dt.timedelta(days=7, seconds=1)
            r = await c.post(f"/set-password/{again}", data={"password": PASSWORD, "confirm": PASSWORD})  # expired
            assert r.status_code == 400 and hashed == [1]
        assert (await login(api, "new@acme.test", PASSWORD)).status_code == UNAUTHORIZED  # the reset ended it


async def test_a_burst_of_guesses_from_one_address_gets_no_more_tries_than_the_lockout_allows(gateway_factory,
                                                                                              sink_factory):
    """Checked concurrently, every guess of a burst passed the lockout check before the first one failed:
    50 simultaneous guesses from one address were all answered 401 (50 tries, where 5 lock it out).
    Now a burst gets exactly ``auth_max_failures`` tries, the rest 429 without a hash; another address
    still logs in."""
    api = await start_api(gateway_factory, sink_factory, smtp={"auth_max_failures": 5, "auth_lockout": 60})
    async with api.client:
        await add_user(api, "owner@acme.test", "owner")
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        async with httpx.AsyncClient(base_url=api.base, timeout=120, transport=transport,
                                     limits=httpx.Limits(max_connections=30)) as c:
            burst = await asyncio.gather(*(c.post("/api/auth/login", json={"email": "owner@acme.test",
                                                                             "password": f"guess number {i}"})
                                           for i in range(20)))
        codes = sorted(r.status_code for r in burst)
        assert codes == [UNAUTHORIZED] * 5 + [TOO_MANY] * 15, codes
        assert (await login(api, "owner@acme.test", PASSWORD, "127.0.0.3")).status_code == TOO_MANY
        assert (await login(api, "owner@acme.test", PASSWORD, "127.0.0.1")).status_code == OK
        assert api.gw.users._peers == {}  # nothing left behind per address
