"""Crash safety under load: parallel clients, an upstream failing at random, SIGKILL several times.

Every message that got its 250 reaches the upstream at least once (counted by Message-ID), and a
second copy only where the store counted a resend; no message that got a refusal reaches it. A
message whose client sent the final dot but saw the connection die before any reply is ambiguous
(the kill may have come after the commit and before the 250 was written): it may arrive or not.
Runs on SQLite and on PostgreSQL.

The upstream fails before it has the message (4xx at RCPT, 421 at MAIL, a dropped connection).
A kill AFTER the final dot, before the gateway read the reply, is the duplicate window of RFC 1047
that no SMTP client can close: Relay sends the message again (a possible duplicate, counted in
relay_possible_duplicates_total; see Queue.recover), never assumes it delivered.
"""

from __future__ import annotations

import asyncio
import email
import random
import time
import uuid

import aiosmtplib
from aiosmtpd.smtp import SMTP as AioSMTP, Envelope, Session

from tests.conftest import Sink
from tests.support.crash import SENDER, DiscardingSink, Node, counts, pg_node

CLIENTS = 8
PER_CLIENT = 150
KILLS = 3


class FlakySink(DiscardingSink):
    """Fails a quarter of the transactions before taking them: 451, 421 + close, or a dropped connection;
    and commits a message only when it can answer it, 20 ms after its dot (as aiosmtpd): a kill in
    that window discards it here, so a gateway that took a sent dot for a delivery would lose it."""

    delay = 0.02

    rand = random.Random(7)

    async def handle_MAIL(self, server: AioSMTP, session: Session, envelope: Envelope, address: str,
                          options: list) -> str:
        if self.rand.random() < 0.07:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 closing"
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(self, server: AioSMTP, session: Session, envelope: Envelope, address: str,
                          options: list) -> str:
        roll = self.rand.random()
        if roll < 0.10:
            return "451 4.3.0 try again"
        if roll < 0.18:
            server.transport.abort()
            return "421 4.4.2 dropped"
        return await super().handle_RCPT(server, session, envelope, address, options)


async def _client(node: Node, n: int, ok: list[str], refused: list[str], ambiguous: list[str],
                  stop: asyncio.Event) -> None:
    i = 0
    smtp = None
    while i < n:
        mid = f"<load-{uuid.uuid4().hex}@example.com>"
        raw = (f"From: App <{SENDER}>\r\nTo: r@dest.org\r\nSubject: load\r\nMessage-ID: {mid}\r\n\r\nbody\r\n").encode()
        try:
            if smtp is None or not smtp.is_connected:
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.submission, start_tls=True,
                                       validate_certs=False, timeout=10)
                await smtp.connect()
                await smtp.login("apikey", node.key)
            await smtp.mail(SENDER)
            await smtp.rcpt("r@dest.org")
        except (aiosmtplib.SMTPException, OSError):
            smtp = None
            await asyncio.sleep(0.05)  # the gateway is restarting
            continue
        try:
            resp = await smtp.data(raw)
        except aiosmtplib.SMTPResponseException as exc:
            (ambiguous if exc.code in (421, -1) else refused).append(mid)
            smtp = None
        except (aiosmtplib.SMTPException, OSError):
            ambiguous.append(mid)
            smtp = None
        else:
            (ok if resp.code == 250 else refused).append(mid)
        i += 1


async def _run(node: Node, sink: Sink) -> None:
    ok: list[str] = []
    refused: list[str] = []
    ambiguous: list[str] = []
    stop = asyncio.Event()
    await node.start()
    clients = [asyncio.create_task(_client(node, PER_CLIENT, ok, refused, ambiguous, stop)) for _ in range(CLIENTS)]
    rand = random.Random(11)
    kills = []
    for _ in range(KILLS):
        await asyncio.sleep(rand.uniform(0.5, 1.5))
        kills.append(time.time())
        node.kill9()
        await node.start()
    await asyncio.wait_for(asyncio.gather(*clients), 180)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while node.pending():
        assert loop.time() < deadline, f"queue did not drain: {node.states()}"
        await asyncio.sleep(0.2)
    node.stop()
    seen = counts(sink, ok + refused + ambiguous)
    assert len(ok) > CLIENTS * PER_CLIENT / 2
    missing = [m for m in ok if seen[m] < 1]
    assert missing == [], (f"{len(missing)} of {len(ok)} accepted messages never arrived: "
                           f"{_arrivals(sink, missing, kills)}")
    assert [m for m in refused if seen[m]] == []
    # a second copy only where a dot went without its reply and the store counted the resend
    duplicates = sum(seen[m] - 1 for m in ok + ambiguous if seen[m] > 1)
    assert duplicates <= node.resent(), (f"{duplicates} duplicates, {node.resent()} counted resends: "
                                         f"{_arrivals(sink, [m for m in ok if seen[m] > 1], kills)}")


def _arrivals(sink: Sink, mids: list[str], kills: list[float]) -> str:
    """When (relative to the kills) and on which connection each copy arrived: the store's events
    of the message (``relay queue show``, data dir kept with --basetemp) tell the rest."""
    wanted = set(mids[:5])
    lines = [f"kills at {[round(k % 1000, 3) for k in kills]}"]
    for rec in sink.received:
        mid = (email.message_from_bytes(rec.data).get("Message-ID") or "").strip()
        if mid in wanted:
            lines.append(f"{mid} at {rec.at % 1000:.3f} from {rec.peer}")
    return "\n".join(lines)


async def test_sigkill_under_load_loses_nothing_and_counts_every_duplicate_sqlite(tmp_path, template):  # noqa: F811
    import shutil

    sink = FlakySink(template.sink_port)
    await sink.start()
    node = Node(tmp_path, template.sink_port)
    shutil.copytree(template.tmp / "data", tmp_path / "data")
    node.key = template.key
    try:
        await _run(node, sink)
    finally:
        node.stop()
        await sink.stop()


async def test_sigkill_under_load_loses_nothing_and_counts_every_duplicate_postgresql(tmp_path, pg_url):
    from tests.conftest import free_port

    sink = FlakySink(free_port())
    async with pg_node(tmp_path, pg_url, sink) as node:
        await _run(node, sink)
