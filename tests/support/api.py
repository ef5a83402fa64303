"""Helpers for the HTTP API tests: a running gateway with a real HTTP client, a fake DNS server, a
webhook receiver. The ``api`` fixture built on them is in tests/gateway/conftest.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import httpx
import sqlalchemy as sa

from relay.gateway import Gateway
from relay.store import models as m
from tests.conftest import Provisioned, Sink, free_port, provision

ALL_SCOPES = ("send", "sandbox", "admin", "aliases", "operator")  # the operator's own account
POLICIES = {"enabled": ["limits", "suppression"], "suppression": {"cache_ttl": 0}}


@dataclass
class Api:
    gw: Gateway
    sink: Sink
    p: Provisioned
    client: httpx.AsyncClient
    responses: list[httpx.Response] = field(default_factory=list)

    @property
    def base(self) -> str:
        return "http://" + self.gw.settings.api.listen

    def as_key(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30,
                                 event_hooks={"response": [self._record]})

    async def _record(self, response: httpx.Response) -> None:
        await response.aread()
        self.responses.append(response)

    def count(self, model: Any) -> int:
        with self.gw.store.sessions() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(model)) or 0

    def submitted(self) -> int:
        """Messages the account submitted (system mail such as alias verification apart)."""
        with self.gw.store.sessions() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(m.Message)
                            .where(m.Message.source.in_(("api", "smtp")))) or 0


def send_body(p: Provisioned, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"from": {"email": p.alias, "name": "App"}, "to": [{"email": "user@dest.org"}],
                            "subject": "Hello", "text": "Hello there", "html": "<p>Hello there</p>"}
    body.update(over)
    return body


async def start_api(gateway_factory: Any, sink_factory: Any, *, scopes: tuple[str, ...] = ALL_SCOPES,
                    **overrides: Any) -> Api:
    sink = await sink_factory()
    overrides.setdefault("policies", POLICIES)
    gw = await gateway_factory(**overrides)
    p = provision(gw, sink.port, scopes=scopes)
    api = Api(gw, sink, p, None)  # type: ignore[arg-type]
    api.client = api.as_key(p.key)
    return api


# -- a DNS server for TXT lookups (domain verification, DKIM rotation) --------------------------------
class FakeDns(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        q = query.question[0]
        values = self.txt.get(q.name.to_text().rstrip(".").lower(), [])
        if q.rdtype == dns.rdatatype.TXT and values:
            texts = [" ".join('"' + v[i:i + 200] + '"' for i in range(0, len(v), 200)) for v in values]
            reply.answer.append(dns.rrset.from_text_list(q.name, 60, dns.rdataclass.IN, dns.rdatatype.TXT, texts))
        elif not values:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


async def start_dns() -> FakeDns:
    port = free_port()
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(FakeDns, local_addr=("127.0.0.1", port))
    proto.port = port
    return proto


# -- a webhook receiver ----------------------------------------------------------------------------------
@dataclass
class Hook:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A minimal HTTP/1.1 server recording POSTs; ``status`` is what it answers."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Hook] = []
        self.status = 200
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            headers: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if self.status < 300:
                self.received.append(Hook(headers, body))
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()
