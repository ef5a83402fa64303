"""The gateway's memory has a total bound under many concurrent large submissions: ``relay serve``
(a subprocess, measured from /proc) is flooded with SMTP sessions that each send a large DATA
(unterminated, or past the size limit) and with large HTTP bodies (without a key, over the cap, or
under it), and its peak RSS stays under baseline + the DATA budget + the HTTP body cap x
api.max_connections, times the copies each byte is held in, plus slack (see README, "Memory")."""

from __future__ import annotations

import asyncio
import contextlib

from relay.api.limits import body_cap
from relay.gateway import Gateway
from relay.ops.config import load_settings
from tests.conftest import free_port, provision
from tests.support.crash import Node
from tests.support.rawsmtp import RawSMTP
from tests.support.replies import INSUFFICIENT, OK, START_DATA, TOO_BIG

MiB = 1 << 20
SIZE = 8 * MiB  # smtp.max_message_size
BUDGET = 32 * MiB  # smtp.data_memory_budget: four DATA at once
HTTP_CONNECTIONS = 12  # api.max_connections
BODIES = 2 * body_cap(SIZE)  # api.body_memory_budget: two bodies of the largest size at once
SESSIONS = 24
REQUESTS = 24
UNAVAILABLE = 503
MESSAGE = b"From: App <app@example.com>\r\nTo: someone@dest.org\r\nSubject: memory\r\n\r\nsmall\r\n.\r\n"


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def provisioned(tmp_path) -> tuple[Node, int, str]:
    """A Node (``relay serve`` subprocess) on a data dir provisioned in-process (faster than the CLI)."""
    node = Node(tmp_path, free_port())
    smtps = free_port()
    node.env.update({"RELAY_SMTP_SMTPS": f"127.0.0.1:{smtps}", "RELAY_SMTP_MAX_MESSAGE_SIZE": str(SIZE),
                     "RELAY_SMTP_DATA_MEMORY_BUDGET": str(BUDGET), "RELAY_SMTP_DATA_TIMEOUT": "60",
                     "RELAY_API_MAX_CONNECTIONS": str(HTTP_CONNECTIONS), "RELAY_API_BODY_MEMORY_BUDGET": str(BODIES)})
    gw = Gateway(load_settings(None, env=node.env), env=node.env)
    try:
        key = provision(gw, node.sink_port).key
    finally:
        gw.runner.shutdown()
        gw.store.close()
    return node, smtps, key


async def smtp_flood(port: int, key: str, i: int, held: list[RawSMTP]) -> int:
    """One session: DATA, then (when it gets its 354) a message that ends past the size limit, or
    one just under it that never ends (held open). Returns the DATA reply code."""
    c = await RawSMTP.transaction(port, key)
    code, _ = await c.cmd("DATA")
    if code != START_DATA:
        await c.close()
        return code
    line = b"x" * 998 + b"\r\n"
    chunk = line * 1024  # ~1 MiB
    oversized = i % 2 == 0
    for _ in range((SIZE + 4 * MiB) // len(chunk) if oversized else SIZE // len(chunk) - 1):
        await c.send(chunk)
    if oversized:
        await c.send(b".\r\n")
        code, _ = await c.reply()
        assert code == TOO_BIG, code
        await c.close()
    else:
        held.append(c)
    return START_DATA


async def http_flood(api: str, key: str, kind: int, admitted: asyncio.Event | None = None) -> int:
    """One request: a declared 50 MB body without a key (kind 0), one over the cap with a key (1),
    or a body just under the cap (not JSON) that the app reads whole (2). Returns the status.
    *admitted* is set once the server has answered, or has read 4 MiB of the body. 0: the server
    answered from the headers and closed before the answer was read (the connection was reset)."""
    host, port = api.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    cap = body_cap(SIZE)
    length = 50_000_000 if kind == 0 else cap + 1 if kind == 1 else cap - 1000
    auth = "" if kind == 0 else f"Authorization: Bearer {key}\r\n"
    writer.write(f"POST /api/v1/send HTTP/1.1\r\nHost: relay.test\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
    async def body() -> None:
        piece, sent = b"z" * MiB, 0
        with contextlib.suppress(OSError):  # answered and closed before the whole body went
            while sent < length:
                writer.write(piece[:length - sent])
                await writer.drain()
                sent += min(len(piece), length - sent)
                if sent >= 4 * MiB and admitted is not None:
                    admitted.set()

    sending = asyncio.create_task(body() if kind == 2 else asyncio.sleep(0))  # 0, 1: answered from the headers
    try:
        head = await asyncio.wait_for(reader.readline(), 30)
    except ConnectionResetError:
        head = b"HTTP/1.1 0 reset"  # answered and closed with the body unread: the answer was lost
    finally:
        if admitted is not None:
            admitted.set()
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    return int(head.split(b" ", 2)[1])


async def test_rss_stays_under_the_bound_with_many_concurrent_large_submissions(tmp_path):
    node, smtps, key = await asyncio.to_thread(provisioned, tmp_path)
    await node.start()
    try:
        # warm up: one message and one API call load what the gateway loads lazily
        c = await RawSMTP.transaction(smtps, key)
        assert (await c.cmd("DATA"))[0] == START_DATA
        await c.send(MESSAGE)
        assert (await c.reply())[0] == OK
        await c.close()
        api = node.env["RELAY_API_LISTEN"]
        assert await http_flood(api, key, 0) == 401
        assert node.proc is not None
        base = memory(node.proc.pid)["VmRSS"]

        held: list[RawSMTP] = []
        smtp = asyncio.gather(*(smtp_flood(smtps, key, i, held) for i in range(SESSIONS)))
        # HTTP: as many requests as the listener serves at once (two refused from their headers,
        # two bodies read whole, the others over the body budget), then more, beyond api.max_connections
        first = [0, 1] + [2] * (HTTP_CONNECTIONS - 3)
        admitted = [asyncio.Event() for _ in first]
        served = asyncio.gather(*(http_flood(api, key, kind, ev) for kind, ev in zip(first, admitted)))
        for ev in admitted:
            await ev.wait()
        beyond = await asyncio.gather(*(http_flood(api, key, i % 3) for i in range(REQUESTS)))
        smtp_codes, http_codes = await smtp, [*await served, *beyond]
        peak = memory(node.proc.pid)
        for c in held:
            c.drop()
        print(f"\nbaseline {base / MiB:.0f} MiB, peak {peak['VmHWM'] / MiB:.0f} MiB, now {peak['VmRSS'] / MiB:.0f} MiB; "
              f"SMTP {sorted(smtp_codes)}; HTTP {sorted(http_codes)}")
        # (an oversized transfer that ends gives its reservation back to a later session)
        assert set(smtp_codes) == {START_DATA, INSUFFICIENT} and smtp_codes.count(START_DATA) >= BUDGET // SIZE
        assert http_codes[:2] == [401, 413]
        read, refused = http_codes[2:len(first)].count(400), len(first) - 2 - http_codes[2:len(first)].count(400)
        assert read >= 2 and refused > 0 and set(http_codes[2:]) <= {400, UNAVAILABLE, 0, 401, 413}
        bound = base + 2 * BUDGET + 3 * BODIES + 48 * MiB
        assert peak["VmHWM"] < bound, f"peak RSS {peak['VmHWM'] / MiB:.0f} MiB over the bound {bound / MiB:.0f} MiB"
        assert set(http_codes[len(first):]) <= {UNAVAILABLE, 0, 400, 401, 413}
    finally:
        with contextlib.suppress(Exception):
            node.stop()
