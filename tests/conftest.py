"""Shared fixtures: real servers on free loopback ports.

- ``sink_factory``: aiosmtpd upstream sinks in the test's loop, with scripted replies.
- ``gateway_factory``: a whole Relay gateway (SMTP listeners, API, delivery) in the test's loop,
  on a fresh data dir, with the store on SQLite (default) or PostgreSQL (``db_url`` fixture).
- ``provision``: account + verified domain + verified alias + upstream + API key, through Admin.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP as AioSMTP, Envelope, Session

from relay.ops.config import settings_from_dict
from relay.gateway import Gateway

PG_ADMIN_URL = os.environ.get("RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_rand = random.Random()
_given: set[int] = set()


def free_port() -> int:
    """A free loopback port OUTSIDE the kernel's ephemeral range: a gateway restarted on the same
    ports under load must not find one taken by some outgoing connection in the meantime."""
    lo, hi = _EPHEMERAL
    candidates = [p for p in range(10000, 65000) if not lo <= p <= hi]
    for _ in range(200):
        port = _rand.choice(candidates)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _given.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- upstream sinks ---------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any
    at: float = field(default_factory=time.time)  # arrival (wall clock): to line up with kills in a failure


class CommittingSMTP(AioSMTP):
    """An aiosmtpd upstream that behaves like an MTA at end of data: a message whose final dot has
    arrived is taken even if the client's FIN follows at once. (aiosmtpd itself cancels the session
    on EOF, dropping a complete message it had not processed yet; Postfix's smtpd does not.)"""

    def eof_received(self):
        return asyncio.StreamReaderProtocol.eof_received(self)


@dataclass
class Sink:
    """An aiosmtpd upstream. ``script`` is a list of replies for DATA (None = accept with 250);
    ``rcpt_replies`` maps an address to its RCPT reply."""

    port: int
    received: list[Received] = field(default_factory=list)
    data_replies: list[str | None] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    connections: int = 0
    server: asyncio.AbstractServer | None = None
    drop_after_data: int = 0  # close the connection (no reply) after N more DATA dots
    pipelining: bool = True  # advertise PIPELINING (RFC 2920), as Postfix, SES and the others do
    smtputf8: bool = True  # advertise SMTPUTF8 (RFC 6531)

    async def handle_EHLO(self, server: AioSMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        reply = self.rcpt_replies.get(address)
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if reply is not None:
                if reply == "DROP":
                    server.transport.close()
                    return "421 4.4.2 dropped"
                if reply.startswith("421"):
                    asyncio.get_running_loop().call_soon(server.transport.close)
                return reply
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.peer))
        return "250 2.0.0 OK stored"

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            self.server = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sink = self

        def factory() -> AioSMTP:
            sink.connections += 1
            return CommittingSMTP(sink, hostname="sink.test", enable_SMTPUTF8=sink.smtputf8, loop=loop)

        self.server = await loop.create_server(factory, "127.0.0.1", self.port, reuse_address=True)


@pytest.fixture
async def sink_factory():
    sinks: list[Sink] = []

    async def make(port: int | None = None, *, pipelining: bool = True, smtputf8: bool = True) -> Sink:
        sink = Sink(port or free_port(), pipelining=pipelining, smtputf8=smtputf8)
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for s in sinks:
        await s.stop()


# -- databases --------------------------------------------------------------------------------------
def _pg_available() -> bool:
    try:
        eng = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
                               connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


PG_OK = _pg_available()


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    if not PG_OK:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    name = "relay_test_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Run a test on both stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/relay.db"
    return request.getfixturevalue("pg_url")


# -- the gateway ----------------------------------------------------------------------------------
def make_settings(tmp_path: Path, db_url: str | None = None, **overrides: Any):
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "hostname": "relay.test",
        "smtp": {"submission": f"127.0.0.1:{free_port()}", "smtps": f"127.0.0.1:{free_port()}",
                 "auth_max_failures": 1000},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "security": {"allow_targets": ["127.0.0.0/8"]},  # webhook receivers of the tests run on loopback
        "delivery": {"retry_base": 0.2, "retry_max": 1, "poll_interval": 0.2, "concurrency": 8,
                     "verify_certificates": False, "connect_timeout": 2, "command_timeout": 5},
    }
    if db_url:
        data["database"] = {"url": db_url}
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return settings_from_dict(data, env={})


@pytest.fixture
async def gateway_factory(tmp_path):
    gateways: list[Gateway] = []

    async def make(db_url: str | None = None, *, start: bool = True, subdir: str = "gw",
                   clock: Any = None, **overrides: Any) -> Gateway:
        d = tmp_path / f"{subdir}{len(gateways)}"
        d.mkdir()
        gw = Gateway(make_settings(d, db_url, **overrides), env={}, **({"clock": clock} if clock else {}))
        gateways.append(gw)
        if start:
            await gw.start()
        return gw

    yield make
    for gw in gateways:
        if not gw.stopped.is_set() and gw.servers:
            await gw.stop(grace=1)


@dataclass
class Provisioned:
    key: str
    account: str
    alias: str
    domain: str
    records: dict[str, str]  # DNS name -> TXT value


def provision(gw: Gateway, sink_port: int, *, account: str = "acme", domain: str = "example.com",
              alias: str = "app@example.com", ip_pool: str = "default", scopes: tuple[str, ...] = ("send",),
              upstream: str = "sink") -> Provisioned:
    """Set up an account that can send through ``sink_port`` (synchronously, through Admin)."""
    admin = gw.admin
    d = admin.directory
    if not any(a.name == account for a in d.list_accounts()):
        admin.create_account(account)
    records = {}
    if d.find_domain(domain) is None:
        rec, recs = admin.add_domain(domain, account)
        records = {r.name: r.value for r in recs}
        admin.verify_domain(domain, trust=True)
    else:
        records = {r.name: r.value for r in admin.dns_records(d.get_domain(domain))}
    if not any(u.name == upstream for u in d.list_upstreams()):
        admin.add_upstream(name=upstream, ip_pool=ip_pool, host="127.0.0.1", port=sink_port, encryption="none")
    if d.find_alias(alias) is None:
        admin.add_alias(alias, account=account, ip_pool=ip_pool)
        admin.verify_alias(email=alias)
    key, _ = admin.create_key(account, list(scopes))
    gw.load_upstreams()
    gw.pipeline.invalidate()
    return Provisioned(key, account, alias, domain, records)


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def port_of(gw: Gateway, listener: str) -> int:
    return gw.sockets[listener].getsockname()[1]
