"""The HTTP listener is bounded in connections and in the time and size of a request's headers:
a request beyond ``api.max_connections`` is 503, a client that trickles its headers (slow loris) or
sends none is closed after ``api.header_timeout``, an unfinished request head over 16 KiB is 400."""

from __future__ import annotations

import asyncio

import httpx

UNAVAILABLE, BAD_REQUEST = 503, 400
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: slow-loris\r\nAccept: */*\r\n\r\n"


async def _open(gw) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.settings.api.listen.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_headers_sent_byte_by_byte_are_cut_off_at_the_header_timeout(gateway_factory):
    gw = await gateway_factory(api={"header_timeout": 0.5})
    reader, writer = await _open(gw)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for byte in REQUEST:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.05)  # the whole request would take ~4 s

    task = asyncio.create_task(trickle())
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    assert sent < len(REQUEST)
    silent_reader, silent = await _open(gw)  # a connection that never sends a byte
    assert await asyncio.wait_for(silent_reader.read(), 10) == b""
    silent.close()
    async with httpx.AsyncClient(base_url=f"http://{gw.settings.api.listen}", timeout=10) as c:
        assert (await c.get("/healthz")).status_code == 200  # kept alive between requests: still served


async def test_a_request_beyond_max_connections_is_503(gateway_factory):
    gw = await gateway_factory(api={"max_connections": 3})
    idle = [await _open(gw) for _ in range(2)]
    async with httpx.AsyncClient(base_url=f"http://{gw.settings.api.listen}", timeout=10) as c:
        await asyncio.sleep(0)  # (the server sees the two connections when it accepts them)
        status = (await c.get("/healthz")).status_code
        for _, w in idle:
            w.close()
        assert status == UNAVAILABLE
        for _ in range(200):  # the server sees the idle ones go
            if (await c.get("/healthz")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("still 503 after the other connections closed")


async def test_headers_over_16_kib_are_400(gateway_factory):
    gw = await gateway_factory()
    reader, writer = await _open(gw)
    # (h11 bounds what it holds of an unfinished request head)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Pad: " + b"a" * 17_000 + b"\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.split(b" ", 2)[1] == str(BAD_REQUEST).encode()
