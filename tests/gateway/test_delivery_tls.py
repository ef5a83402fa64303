"""Delivery to TLS upstreams: STARTTLS (``encryption = "tls"``) and implicit TLS (``"ssl"``), with the
certificate verified, on a reused and pipelined session; and a certificate that does not verify.

Every test runs on asyncio's own loop and on uvloop (the loop of ``relay serve``): the pipelined
transaction swaps the protocol under the TLS transport, and the two loops implement TLS differently.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from relay.ops.tls import generate_self_signed
from tests.conftest import CommittingSMTP, Sink, free_port, provision, wait_for
from tests.gateway.test_delivery import make_msg, settle, submit, wait_final


# (pytest-asyncio 1.x still honours an overridden event_loop_policy fixture, with a deprecation warning)
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture:DeprecationWarning")


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def certificate(tmp_path):
    cert, key = generate_self_signed("localhost")
    (tmp_path / "up.crt").write_bytes(cert)
    (tmp_path / "up.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "up.crt", tmp_path / "up.key")
    return tmp_path / "up.crt", ctx


class TlsSink(Sink):
    """The aiosmtpd sink behind STARTTLS or implicit TLS; ``tls_peers`` counts the sessions that
    delivered over TLS."""

    def __init__(self, port: int, mode: str, context: ssl.SSLContext) -> None:
        super().__init__(port)
        self.mode, self.context = mode, context
        self.tls_sessions = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        if session.ssl is not None or self.mode == "ssl":
            self.tls_sessions += 1
        return await super().handle_DATA(server, session, envelope)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sink = self

        def factory():
            sink.connections += 1
            return CommittingSMTP(sink, hostname="sink.test", loop=loop,
                                  tls_context=self.context if self.mode == "tls" else None,
                                  require_starttls=self.mode == "tls")

        self.server = await loop.create_server(factory, "127.0.0.1", self.port,
                                               ssl=self.context if self.mode == "ssl" else None)


async def tls_gateway(gateway_factory, sink: TlsSink, verify: bool):
    gw = await gateway_factory()
    gw.admin.add_upstream(name="sink", ip_pool="default", host="127.0.0.1", port=sink.port,
                          encryption=sink.mode, verify_tls=verify)
    return gw, provision(gw, sink.port)


@pytest.mark.parametrize("mode", ["tls", "ssl"])
async def test_delivery_over_verified_tls_reuses_one_session(gateway_factory, certificate, monkeypatch, mode,
                                                             event_loop_policy):
    loop_kind = type(asyncio.get_running_loop()).__module__
    assert ("uvloop" in loop_kind) == ("uvloop" in type(event_loop_policy).__module__)
    cert, ctx = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the upstream's self-signed certificate is trusted
    sink = TlsSink(free_port(), mode, ctx)
    await sink.start()
    try:
        gw, p = await tls_gateway(gateway_factory, sink, verify=True)
        await settle(gw)
        raw, mid = make_msg(["a@dest.org", "b@dest.org"], f"over {mode}")
        ids = await submit(gw, p.key, [(["a@dest.org", "b@dest.org"], raw)] * 3)
        views = await wait_final(gw, *ids)
        assert [r.state for v in views for r in v.recipients] == ["delivered"] * 6
        mine = [r for r in sink.received if mid.encode() in r.data]
        assert len(mine) == 3 and all(r.rcpt_tos == ["a@dest.org", "b@dest.org"] for r in mine)
        assert sink.tls_sessions == len(sink.received)  # everything went over TLS
        assert sink.connections <= 2  # the verification mail's session is reused, at most one more
    finally:
        await sink.stop()


@pytest.mark.parametrize("mode", ["tls", "ssl"])
async def test_an_unverifiable_certificate_defers_and_sends_nothing(gateway_factory, certificate, mode):
    _, ctx = certificate
    sink = TlsSink(free_port(), mode, ctx)
    await sink.start()
    try:
        gw, p = await tls_gateway(gateway_factory, sink, verify=True)
        raw, _ = make_msg(["a@dest.org"], "not verified")
        (qid,) = await submit(gw, p.key, [(["a@dest.org"], raw)])
        await wait_for(lambda: gw.store.queue.show(qid).recipients[0].attempts >= 1)
        r = gw.store.queue.show(qid).recipients[0]
        assert r.state in ("deferred", "queued", "delivering") and "CERTIFICATE_VERIFY_FAILED" in (r.last_reply or "")
        assert sink.received == []
    finally:
        await sink.stop()
