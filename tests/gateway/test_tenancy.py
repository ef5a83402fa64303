"""The operator and the accounts, tried as a second account would: its ``admin`` key administers its
own account only. Upstreams belong to their IP pool's owner; an account's mail never goes through
another account's upstream; operator pools can be restricted and granted; the ``operator`` scope,
/metrics and readiness detail stay the operator's."""

from __future__ import annotations

import asyncio
import ipaddress

import aiosmtplib
import pytest

from relay.delivery.connections import UpstreamConfig
from relay.delivery.probe import probe
from relay.delivery.router import Router
from relay.delivery.upstream import Upstream
from relay.services.explain import explain
from tests.conftest import port_of, provision, wait_for
from tests.support.api import send_body, start_api

OK, BAD_REQUEST, FORBIDDEN, NOT_FOUND = 200, 400, 403, 404


@pytest.fixture
async def two(gateway_factory, sink_factory):
    """``acme`` holds the operator's key (the api fixture); ``globex`` is a second account with an
    account ``admin`` key of its own."""
    a = await start_api(gateway_factory, sink_factory)
    other = provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test",
                      scopes=("admin", "send", "aliases"))
    async with a.client, a.as_key(other.key) as globex:
        yield a, other, globex


async def test_an_account_admin_key_sees_and_touches_no_operator_upstream(two):
    a, _, globex = two
    operator_up = a.gw.store.directory.get_upstream("sink")
    assert (await globex.get("/api/v1/smtp-pools")).json() == []
    for method, path, body in (("GET", "", None), ("PATCH", "", {"host": "203.0.113.66"}), ("DELETE", "", None),
                               ("POST", "/test", None)):
        r = await globex.request(method, f"/api/v1/smtp-pools/{operator_up.id}{path}", json=body)
        assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "SMTP pool not found"}), path
    assert a.gw.store.directory.get_upstream("sink") == operator_up  # unchanged, still there
    # nor can it slip an upstream into an operator pool, the system pool above all
    for pool in ("default", "transactional", "marketing"):
        r = await globex.post("/api/v1/smtp-pools", json={"name": f"evil-{pool}", "host": "127.0.0.1", "port": 2525,
                                                          "encryption": "none", "ip_pool": pool, "priority": -1000})
        assert (r.status_code, r.json()["error"]) == (
            FORBIDDEN, f"IP pool {pool!r} is reserved for the operator: choose another name"), pool
    a.gw.admin.restrict_pool("vip")  # an operator pool by another name
    r = await globex.post("/api/v1/smtp-pools", json={"name": "evil", "host": "127.0.0.1", "port": 2525,
                                                      "encryption": "none", "ip_pool": "vip"})
    assert (r.status_code, r.json()["error"]) == (FORBIDDEN, "IP pool 'vip' is not available to this account")
    assert [u.name for u in a.gw.store.directory.list_upstreams()] == ["sink"]


async def test_an_accounts_upstream_carries_its_mail_only(two, sink_factory):
    a, other, globex = two
    own_sink = await sink_factory()
    r = await globex.post("/api/v1/smtp-pools", json={"name": "globex relay", "host": "127.0.0.1",
                                                      "port": own_sink.port, "encryption": "none"})
    assert r.status_code == OK, r.text
    up = r.json()
    assert (up["ip_pool"], up["owner"]) == ("globex", "account")  # its own pool, named after it by default
    assert [p["id"] for p in (await globex.get("/api/v1/smtp-pools")).json()] == [up["id"]]
    # the operator sees it; acme's alias may not use it
    assert {p["name"]: p["owner"] for p in (await a.client.get("/api/v1/smtp-pools")).json()} == {
        "sink": "operator", "globex relay": "account"}
    r = await a.client.patch(f"/api/v1/aliases/{a.gw.store.directory.find_alias(a.p.alias).id}",
                             json={"ip_pool": "globex"})
    assert (r.status_code, r.json()["error"]) == (FORBIDDEN, "IP pool 'globex' is not available to this account")
    # globex points its alias at its pool: its mail goes to its upstream, acme's to the operator's
    alias = a.gw.store.directory.find_alias(other.alias)
    r = await globex.patch(f"/api/v1/aliases/{alias.id}", json={"ip_pool": "globex"})
    assert r.status_code == OK, r.text
    a.gw.pipeline.invalidate()
    r = await globex.post("/api/v1/send", json=send_body(other, to=[{"email": "g@dest.org"}]))
    assert r.status_code == OK, r.text
    r = await a.client.post("/api/v1/send", json=send_body(a.p, to=[{"email": "a@dest.org"}]))
    assert r.status_code == OK, r.text
    await wait_for(lambda: own_sink.received and any(m.rcpt_tos == ["a@dest.org"] for m in a.sink.received))
    assert [m.rcpt_tos for m in own_sink.received] == [["g@dest.org"]]
    assert all(m.mail_from != other.alias for m in a.sink.received)
    # and the router refuses another account's mail for that pool outright (the last guard)
    assert a.gw.router.order("globex", a.gw.store.directory.get_account("acme").id) == []
    assert [u.name for u in a.gw.router.order("globex", alias.account_id)] == ["globex relay"]


async def test_an_account_upstream_host_must_be_public(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory, security={"allow_targets": []})
    other = provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test",
                      scopes=("admin",))
    async with a.client, a.as_key(other.key) as globex:
        for host in ("127.0.0.1", "localhost", "10.0.0.1", "169.254.169.254", "[::1]", "2130706433"):
            r = await globex.post("/api/v1/smtp-pools", json={"name": "scan", "host": host, "port": 25,
                                                              "encryption": "none"})
            assert r.status_code == BAD_REQUEST, (host, r.text)
            assert r.json()["details"]["fieldErrors"] == {"host": [
                "must resolve to public addresses only (the operator can allow a range: [security] allow_targets)"]}
        # the operator's own upstreams may point anywhere
        r = await a.client.post("/api/v1/smtp-pools", json={"name": "local", "host": "127.0.0.1", "port": 25,
                                                            "encryption": "none"})
        assert r.status_code == OK, r.text


async def test_an_account_upstream_is_checked_again_at_connect_time(sink_factory):
    """A name that resolved to a public address when set and to loopback now (DNS rebinding): the
    connection is refused before any byte goes out, and the test says so without a banner."""
    listener = await asyncio.start_server(lambda r, w: w.write(b"220 internal-secret-banner ESMTP\r\n"),
                                          "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        cfg = UpstreamConfig(id="smtp_x", name="x", host="localhost", port=port, encryption="none", owner="acc_2")
        result = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2))
        assert result["success"] is False
        assert result["error"] == (f"not_allowed: localhost:{port} must resolve to public addresses only "
                                   "(the operator can allow a range: [security] allow_targets)")
        sink = await sink_factory()
        cfg = UpstreamConfig(id="smtp_x", name="x", host="localhost", port=sink.port, encryption="none", owner="acc_2")
        ok = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2,
                                  allow_targets=[ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]))
        assert ok["success"] is True, ok  # through the checked address, by socket (TLS names stay the host's)
    finally:
        listener.close()


async def _serve(reply: bytes | None) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if reply is not None:
            w.write(reply)
            await w.drain()
        await r.read(100)
        w.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("reply, kind", [
    (b"+OK redis-secret-banner 7.2\r\n", "not_smtp"),
    (b"SSH-2.0-OpenSSH_9.2p1 secret-banner\r\n", "not_smtp"),
    (None, "timeout"),
])
async def test_a_connection_test_classifies_and_never_echoes_the_peer(reply, kind):
    server = await _serve(reply)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = UpstreamConfig(id="smtp_x", name="x", host="127.0.0.1", port=port, encryption="none")
        result = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=0.5, command_timeout=0.5))
    finally:
        server.close()
    assert result["success"] is False and result["message"] == "SMTP connection failed"
    assert result["error"].split(":")[0] == kind, result
    assert "secret" not in str(result) and "OpenSSH" not in str(result) and "redis" not in str(result)


async def test_a_connection_test_says_refused(sink_factory):
    server = await _serve(None)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    cfg = UpstreamConfig(id="smtp_x", name="x", host="127.0.0.1", port=port, encryption="none")
    result = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2))
    assert result["error"] == f"refused: 127.0.0.1:{port} refused the connection"


async def test_a_connection_test_says_auth_and_tls(sink_factory):
    sink = await sink_factory()  # plain, no AUTH offered: a username cannot log in
    cfg = UpstreamConfig(id="smtp_x", name="x", host="127.0.0.1", port=sink.port, encryption="none",
                         username="u", password="p")
    result = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2))
    assert result["error"] == f"auth: 127.0.0.1:{sink.port} did not accept the credentials (or offers no AUTH)"
    cfg = UpstreamConfig(id="smtp_x", name="x", host="127.0.0.1", port=sink.port, encryption="tls")
    result = await probe(Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2))
    assert result["error"] == f"tls: TLS could not be negotiated with 127.0.0.1:{sink.port}", result


async def test_restricted_pools_are_for_granted_accounts(two, sink_factory):
    a, other, globex = two
    vip_sink = await sink_factory()
    a.gw.admin.add_upstream(name="vip relay", ip_pool="vip", host="127.0.0.1", port=vip_sink.port, encryption="none")
    a.gw.load_upstreams()
    a.gw.admin.restrict_pool("vip")
    alias = a.gw.store.directory.find_alias(other.alias)
    r = await globex.patch(f"/api/v1/aliases/{alias.id}", json={"ip_pool": "vip"})
    assert (r.status_code, r.json()["error"]) == (FORBIDDEN, "IP pool 'vip' is not available to this account")
    a.gw.admin.grant_pool("vip", "globex")
    r = await globex.patch(f"/api/v1/aliases/{alias.id}", json={"ip_pool": "vip"})
    assert r.status_code == OK, r.text
    a.gw.pipeline.invalidate()
    r = await globex.post("/api/v1/send", json=send_body(other, to=[{"email": "v@dest.org"}]))
    assert r.status_code == OK, r.text
    await wait_for(lambda: vip_sink.received)
    seen = await explain_route(a.gw, other.key, other.alias)
    assert (seen.ip_pool, seen.pool_owner, seen.mail.accepted) == (
        "vip", "operator (restricted; granted to this account)", True)
    # revoked: its next submission through the pool is refused, over HTTP and SMTP alike
    a.gw.admin.revoke_pool("vip", "globex")
    a.gw.pipeline.invalidate()
    r = await globex.post("/api/v1/send", json=send_body(other, to=[{"email": "v2@dest.org"}]))
    assert (r.status_code, r.json()["error"]) == (
        FORBIDDEN, "This account may not send through that sender's IP pool")
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(a.gw, "submission"), start_tls=True,
                           validate_certs=False, timeout=10)
    await smtp.connect()
    await smtp.login("apikey", other.key)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await smtp.mail(other.alias)
    assert (refused.value.code, refused.value.message) == (
        550, "5.7.1 This account may not send through that sender's IP pool")
    await smtp.quit()
    assert len(vip_sink.received) == 1
    seen = await explain_route(a.gw, other.key, other.alias)
    assert (seen.mail.accepted, seen.mail.reply) == (
        False, "550 5.7.1 This account may not send through that sender's IP pool")


async def explain_route(gw, key: str, sender: str):
    return await explain(gw.store, gw.runner, gw.settings, gw.policies, key=key, sender=sender,
                         recipients=["x@dest.org"])


async def test_the_operator_scope_is_given_only_by_the_cli(two):
    a, _, globex = two
    for client in (a.client, globex):  # not even an operator key hands it out
        r = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["operator"]})
        assert (r.status_code, r.json()["error"]) == (
            FORBIDDEN, "the operator scope is given only from the CLI (relay key create --scopes operator)")


async def test_usage_shows_no_other_accounts_traffic(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory,
                        policies={"enabled": ["quota"], "quota": {"pool_daily": 1000}})
    other = provision(a.gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test",
                      scopes=("admin", "send"))
    async with a.client, a.as_key(other.key) as globex:
        for _ in range(3):
            assert (await a.client.post("/api/v1/send", json=send_body(a.p))).status_code == OK
        usage = (await globex.get("/api/v1/usage")).json()
    pools = [lim for lim in usage["limits"] if lim["kind"] == "pool"]
    assert pools and all(p["shared"] and p["used_today"] is None and p["remaining_today"] is None for p in pools)
    assert usage["sent_today"] == {k: 0 for k in usage["sent_today"]}


def test_the_router_gives_an_accounts_pool_to_no_one_else():
    class Target:
        def __init__(self, name: str) -> None:
            self.name = name
            self.cfg = UpstreamConfig(id=name, name=name, host="h", port=25, encryption="none")

    r = Router()
    r.set_ip_pools({"globex": [Target("g")], "default": [Target("d")]}, {"globex": "acc_g", "default": None})
    assert [u.name for u in r.order("globex", "acc_g")] == ["g"]
    assert r.order("globex", "acc_a") == [] and r.order("globex", None) == []
    assert [u.name for u in r.order("default", "acc_a")] == ["d"]
