"""Alias verification links (#13): opening one (a GET, as mail scanners do) shows a page and changes
nothing; its button (a POST) verifies, once; a link older than ``aliases.verify_link_ttl`` is refused
with 410 and verifies nothing."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from relay.store import models as m
from relay.store import utcnow
from tests.support.api import Api, start_api

TTL = 60.0
OK, NOT_FOUND, GONE = 200, 404, 410


def stored(api: Api, email: str) -> tuple[bool, str | None]:
    """(verified, token) as stored."""
    with api.gw.store.sessions() as s:
        row = s.scalar(sa.select(m.Alias).where(m.Alias.email == email))
        return row.verified_at is not None, row.verification_token


def token_of(api: Api, email: str) -> str:
    token = stored(api, email)[1]
    assert token
    return token


def age(api: Api, email: str, seconds: float) -> None:
    """The link of ``email`` was sent ``seconds`` ago."""
    with api.gw.store.sessions.begin() as s:
        s.execute(sa.update(m.Alias).where(m.Alias.email == email)
                  .values(verification_sent_at=utcnow() - dt.timedelta(seconds=seconds)))


async def test_get_shows_a_page_and_only_its_post_verifies(gateway_factory, sink_factory):
    api = await start_api(gateway_factory, sink_factory, aliases={"verify_link_ttl": TTL})
    api.gw.admin.add_alias("new@example.com", account=api.p.account)
    link = f"/api/v1/aliases/verify/{token_of(api, 'new@example.com')}"
    async with api.as_key(None) as anonymous:  # the link needs no key
        for _ in range(3):  # however often a scanner opens it
            page = await anonymous.get(link)
            assert page.status_code == OK and stored(api, "new@example.com")[0] is False
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "same-origin"
        assert '<form method="post"><button type="submit">Verify new@example.com</button></form>' in page.text
        assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]  # self-contained
        head = await anonymous.head(link)
        assert head.status_code in (OK, 405) and stored(api, "new@example.com")[0] is False

        done = await anonymous.post(link)
        assert done.status_code == OK and "new@example.com is verified" in done.text
        assert stored(api, "new@example.com") == (True, None)
        for again in (anonymous.get(link), anonymous.post(link)):  # a link works once
            r = await again
            assert r.status_code == NOT_FOUND and "not valid" in r.text


async def test_an_expired_link_is_refused_and_verifies_nothing(gateway_factory, sink_factory):
    api = await start_api(gateway_factory, sink_factory, aliases={"verify_link_ttl": TTL})
    api.gw.admin.add_alias("late@example.com", account=api.p.account)
    token = token_of(api, "late@example.com")
    link = f"/api/v1/aliases/verify/{token}"
    age(api, "late@example.com", TTL + 1)
    async with api.as_key(None) as anonymous:
        for call in (anonymous.get(link), anonymous.post(link)):
            r = await call
            assert r.status_code == GONE and "expired" in r.text
        assert stored(api, "late@example.com") == (False, token)
        # just inside the lifetime it still works
        age(api, "late@example.com", TTL - 5)
        assert (await anonymous.post(link)).status_code == OK
        assert stored(api, "late@example.com") == (True, None)


async def test_a_new_link_replaces_an_expired_one(gateway_factory, sink_factory):
    api = await start_api(gateway_factory, sink_factory, aliases={"verify_link_ttl": TTL})
    api.gw.admin.add_alias("again@example.com", account=api.p.account)
    old = token_of(api, "again@example.com")
    age(api, "again@example.com", TTL * 10)
    _, qid = api.gw.admin.resend_verification("again@example.com")
    new = token_of(api, "again@example.com")
    assert new != old and api.gw.store.queue.show(qid).recipients[0].address == "again@example.com"
    async with api.as_key(None) as anonymous:
        assert (await anonymous.post(f"/api/v1/aliases/verify/{old}")).status_code == NOT_FOUND
        assert stored(api, "again@example.com")[0] is False
        assert (await anonymous.post(f"/api/v1/aliases/verify/{new}")).status_code == OK
    assert stored(api, "again@example.com") == (True, None)


async def test_unknown_tokens_and_the_operator_override(api: Api):
    async with api.as_key(None) as anonymous:
        for token in ("x" * 43, "%3Cscript%3E"):
            for method in ("GET", "POST"):
                r = await anonymous.request(method, f"/api/v1/aliases/verify/{token}")
                assert r.status_code == NOT_FOUND, (method, token, r.status_code)
                assert "<script>" not in r.text
    # the operator's `relay alias verify EMAIL` needs no link and ignores its age
    api.gw.admin.add_alias("ops@example.com", account=api.p.account)
    age(api, "ops@example.com", 30 * 86400)
    assert api.gw.admin.verify_alias(email="ops@example.com").verified is True
    assert stored(api, "ops@example.com") == (True, None)


async def test_the_link_page_cannot_be_framed_whatever_its_answer(gateway_factory, sink_factory):
    """The verification page is one button that changes state: a page that frames it could lay a decoy
    over the button (clickjacking). Every answer of the link, the page, its refusals and its success,
    forbids framing, like the dashboard's pages."""
    api = await start_api(gateway_factory, sink_factory, aliases={"verify_link_ttl": TTL})
    api.gw.admin.add_alias("framed@example.com", account=api.p.account)
    link = f"/api/v1/aliases/verify/{token_of(api, 'framed@example.com')}"
    async with api.as_key(None) as anonymous:
        answers = [await anonymous.get(link), await anonymous.post(link), await anonymous.get(link),
                   await anonymous.get("/api/v1/aliases/verify/" + "x" * 43)]
    assert [r.status_code for r in answers] == [OK, OK, NOT_FOUND, NOT_FOUND]
    for r in answers:
        assert r.headers["x-frame-options"] == "DENY", r.headers
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.headers
