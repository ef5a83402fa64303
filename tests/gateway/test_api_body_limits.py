"""HTTP bodies are bounded before they are read: an attacker's 50 MB upload is refused from its
headers (401 without a key, 413 over the cap), a chunked body is cut off at the cap, and the bodies in flight share
``api.body_memory_budget`` (503 when it is spent)."""

from __future__ import annotations

import asyncio
import json

import httpx

from relay.api.limits import body_cap
from tests.conftest import provision

UNAUTHORIZED, TOO_LARGE = 401, 413


async def head_only(gw, headers: str) -> tuple[int, dict]:
    """Send the request line and headers only (a body that never comes): the answer must not wait for it."""
    host, port = gw.settings.api.listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(headers.encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # answered and closed without the body
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_a_huge_body_without_a_key_is_401_before_it_is_read(gateway_factory, sink_factory):
    gw = await gateway_factory()
    status, body = await head_only(gw, "POST /api/v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       "Content-Length: 50000000\r\n\r\n")
    assert (status, body["error"]) == (UNAUTHORIZED, "Missing API key: send Authorization: Bearer <key>")


async def test_a_declared_length_over_the_cap_is_413_before_it_is_read(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_message_size": 100_000})
    p = provision(gw, sink.port)
    cap = body_cap(100_000)
    status, body = await head_only(gw, f"POST /api/v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {p.key}\r\n"
                                       f"Content-Type: application/json\r\nContent-Length: {cap + 1}\r\n\r\n")
    assert (status, body["error"]) == (TOO_LARGE, f"Request body too large (at most {cap} bytes)")


async def test_a_chunked_body_is_cut_off_at_the_cap(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_message_size": 100_000})
    p = provision(gw, sink.port)
    cap = body_cap(100_000)

    async def chunks():
        for _ in range(cap // 65536 + 2):
            yield b"x" * 65536

    async with httpx.AsyncClient(base_url=f"http://{gw.settings.api.listen}", timeout=10) as c:
        r = await c.post("/api/v1/send", content=chunks(), headers={"Authorization": f"Bearer {p.key}",
                                                                    "Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (TOO_LARGE, f"Request body too large (at most {cap} bytes)")
    assert [m for m in gw.store.queue.list_messages() if m.source == "api"] == []


async def test_bodies_in_flight_share_a_budget_503_when_spent_and_it_comes_back(gateway_factory, sink_factory):
    sink = await sink_factory()
    cap = body_cap(100_000)
    gw = await gateway_factory(smtp={"max_message_size": 100_000}, api={"body_memory_budget": 2 * cap})
    p = provision(gw, sink.port)
    host, port = gw.settings.api.listen.rsplit(":", 1)
    head = (f"POST /api/v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {p.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {cap}\r\n\r\n").encode()

    async def holding() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + b"{")  # the rest of the body is owed
        await writer.drain()
        return reader, writer

    holders = [await holding() for _ in range(2)]
    async with httpx.AsyncClient(base_url=f"http://{gw.settings.api.listen}", timeout=10) as c:
        auth = {"Authorization": f"Bearer {p.key}"}
        for _ in range(500):  # until both bodies are being read
            r = await c.post("/api/v1/send", content=b"{}", headers=auth)
            if r.status_code == 503:
                break
            await asyncio.sleep(0.01)
        assert (r.status_code, r.headers["retry-after"], r.json()["error"]) == (
            503, "1", "Too many request bodies in flight, try again later")
        assert (await c.get("/api/v1/usage", headers=auth)).status_code == 200  # no body, nothing reserved
        reader, writer = holders[0]
        writer.write(b" " * (cap - 1))  # the whole body, not JSON: answered, its reservation comes back
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 10)).split(b" ")[1] == b"400"
        writer.close()
        assert (await c.post("/api/v1/send", content=b"{}", headers=auth)).status_code == 400  # admitted again
    holders[1][1].close()


async def test_any_cookie_is_not_a_credential_a_huge_body_with_one_is_still_401_unread(gateway_factory, sink_factory):
    """The rule "no credentials, 401 before the body is read" took any Cookie header for a credential:
    ``Cookie: a=b`` was enough to have a 20 MB body read and parsed (400) without a key or a session.
    Only the session cookie (``sb-access-token``, as the routes read it) counts; a planted cookie that
    trips a strict parser does not hide it."""
    gw = await gateway_factory()
    for cookie in ("a=b", "sb-access-token=", "sb-access-tokenx=1", "SB-ACCESS-TOKEN=1"):
        status, body = await head_only(gw, "POST /api/v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                           f"Cookie: {cookie}\r\nContent-Length: 20000000\r\n\r\n")
        assert (status, body["error"]) == (UNAUTHORIZED, "Missing API key: send Authorization: Bearer <key>"), cookie
