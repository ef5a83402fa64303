"""System mail has a route on a fresh install whatever the IP pools are called: an alias's
verification email goes through the alias's own IP pool, a DSN through the pool of the message it
reports on, ``[system] ip_pool`` overrides both; when nothing can carry it, alias creation says so.
And the HTTP send's conveniences of the seeds: from.name from the alias, alias_id naming an SMTP
pool, send:transactional / send:marketing keys that work on a fresh install."""

from __future__ import annotations

import sqlalchemy as sa

from relay.store import models as m
from tests.conftest import provision, wait_for
from tests.support.api import send_body, start_api


def pools_of(gw, source: str) -> list[str]:
    with gw.store.sessions() as s:
        return list(s.scalars(sa.select(m.Message.ip_pool).where(m.Message.source == source)))


async def test_system_mail_follows_the_pool_of_what_it_is_about(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    provision(gw, sink.port, ip_pool="transactional", upstream="tx")  # no pool named "default" at all
    assert pools_of(gw, "system") == ["transactional"]  # the verification email: the alias's pool
    await wait_for(lambda: any(r.rcpt_tos == ["app@example.com"] for r in sink.received))
    sink.rcpt_replies["gone@dest.org"] = "550 5.1.1 no such user"
    p = provision(gw, sink.port, ip_pool="transactional", upstream="tx", scopes=("send",))
    async with start_client(gw, p.key) as c:
        r = await c.post("/api/v1/send", json=send_body(p, to=[{"email": "gone@dest.org"}]))
        assert r.status_code == 200, r.text
    await wait_for(lambda: any(r.mail_from == "<>" for r in sink.received))
    assert pools_of(gw, "dsn") == ["transactional"]  # the DSN: the pool of the bounced message


async def test_system_ip_pool_overrides_and_a_missing_route_is_reported(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory, system={"ip_pool": "system"})
    async with a.client:
        r = await a.client.post("/api/v1/aliases", json={"email": "second@example.com"})
        assert r.status_code == 200, r.text
        assert r.json()["warning"] == (
            "IP pool 'system' has no active upstream: the verification email waits in the queue until one is "
            "added (relay upstream add NAME --ip-pool system ...) or [system] ip_pool names a pool that has one")
        assert pools_of(a.gw, "system")[-1] == "system"
        ready = await a.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["pools"]["detail"]["system"]["ok"] is False
        a.gw.admin.add_upstream(name="sys", ip_pool="system", host="127.0.0.1", port=a.sink.port, encryption="none")
        a.gw.load_upstreams()
        r = await a.client.post("/api/v1/aliases", json={"email": "third@example.com"})
        assert r.status_code == 200 and r.json()["warning"] is None, r.text


async def test_http_send_uses_the_alias_name_and_an_smtp_pool_id(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        alias = a.gw.store.directory.find_alias(a.p.alias)
        r = await a.client.patch(f"/api/v1/aliases/{alias.id}", json={"name": "Acme Billing"})
        assert r.status_code == 200, r.text
        a.gw.pipeline.invalidate()
        body = send_body(a.p, to=[{"email": "named@dest.org"}])
        body["from"] = {"email": a.p.alias}
        assert (await a.client.post("/api/v1/send", json=body)).status_code == 200
        await wait_for(lambda: any(r.rcpt_tos == ["named@dest.org"] for r in a.sink.received))
        (got,) = [r for r in a.sink.received if r.rcpt_tos == ["named@dest.org"]]
        assert b"\r\nFrom: Acme Billing <app@example.com>\r\n" in got.data
        # seed 001: alias_id = an SMTP pool's id routes the send through that upstream alone
        dedicated, preferred = await sink_factory(), await sink_factory()
        r = await a.client.post("/api/v1/smtp-pools", json={"name": "preferred", "host": "127.0.0.1",
                                                            "port": preferred.port, "encryption": "none",
                                                            "ip_pool": "dedicated", "priority": -10})
        assert r.status_code == 200, r.text
        r = await a.client.post("/api/v1/smtp-pools", json={"name": "dedicated", "host": "127.0.0.1",
                                                            "port": dedicated.port, "encryption": "none",
                                                            "ip_pool": "dedicated"})
        assert r.status_code == 200, r.text
        r = await a.client.post("/api/v1/send", json=send_body(a.p, to=[{"email": "routed@dest.org"}],
                                                               alias_id=r.json()["id"]))
        assert r.status_code == 200, r.text
        await wait_for(lambda: any(x.rcpt_tos == ["routed@dest.org"] for x in dedicated.received))
        assert not any(x.rcpt_tos == ["routed@dest.org"] for x in a.sink.received + preferred.received)
        # another account's upstream is no route for this one: the same answer as an unknown alias
        other = provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test",
                          scopes=("admin", "send"))
        async with a.as_key(other.key) as globex:
            r = await globex.post("/api/v1/smtp-pools", json={"name": "g", "host": "127.0.0.1", "port": 2525,
                                                              "encryption": "none"})
            assert r.status_code == 200, r.text
            foreign = r.json()["id"]
        r = await a.client.post("/api/v1/send", json=send_body(a.p, alias_id=foreign))
        assert (r.status_code, r.json()["details"]["fieldErrors"]) == (400, {"alias_id": ["Unknown alias"]})


async def test_stream_scoped_keys_work_on_a_fresh_install(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)  # one IP pool, "default"
    async with a.client:
        for scope in ("send:transactional", "send:marketing"):
            key, _ = a.gw.admin.create_key(a.p.account, [scope])
            async with a.as_key(key) as c:
                r = await c.post("/api/v1/send", json=send_body(a.p))
                assert r.status_code == 200, (scope, r.text)


def start_client(gw, key: str):
    import httpx

    return httpx.AsyncClient(base_url="http://" + gw.settings.api.listen,
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def test_a_pool_that_gets_its_first_upstream_delivers_what_waited(gateway_factory, sink_factory):
    """The verification email waited (no upstream in the alias's pool, backoff 30 s); adding the
    pool's first upstream makes it due at once."""
    a = await start_api(gateway_factory, sink_factory, delivery={"retry_base": 30, "retry_max": 60})
    async with a.client:
        r = await a.client.post("/api/v1/aliases", json={"email": "late@example.com", "ip_pool": "fresh"})
        assert r.status_code == 200 and r.json()["warning"], r.text
        def state() -> str | None:
            with a.gw.store.sessions() as s:
                return s.scalar(sa.select(m.Recipient.state).where(m.Recipient.address == "late@example.com"))

        await wait_for(lambda: state() == "deferred")
        r = await a.client.post("/api/v1/smtp-pools", json={"name": "fresh relay", "host": "127.0.0.1",
                                                            "port": a.sink.port, "encryption": "none",
                                                            "ip_pool": "fresh"})
        assert r.status_code == 200, r.text
        await wait_for(lambda: any(x.rcpt_tos == ["late@example.com"] for x in a.sink.received), timeout=5)
