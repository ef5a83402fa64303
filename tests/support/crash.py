"""Crash tests' helpers: ``relay serve`` as a subprocess (a Node) provisioned with the CLI, and
counting what the sink received by Message-ID."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import signal
import subprocess
import uuid
from collections import Counter
from email import policy as email_policy
from pathlib import Path

import aiosmtplib
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP as AioSMTP, Envelope, Session

from relay.ops.config import load_settings
from relay.store import Store
from relay.store import models as m
from relay.store.queue import PENDING, RESENT_REPLY
from tests.conftest import Received, Sink, free_port

SENDER = "app@example.com"
N = 20


class SlowSink(Sink):
    """Takes the message when the final dot arrives (as an MTA that has committed it), then answers
    only after ``delay`` seconds: a kill in that window leaves the gateway without the 250."""

    delay: float = 0.3

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(_received(envelope, session))
        await asyncio.sleep(self.delay)
        return "250 2.0.0 OK stored"


class DiscardingSink(Sink):
    """Commits a message only when it sends its reply, ``delay`` seconds after the final dot, as
    aiosmtpd does: a connection lost in that window (the gateway killed) discards the message. A
    gateway that took a sent dot for a delivery loses exactly these."""

    delay: float = 0.3
    discarded: int = 0  # dots whose connection was lost before the reply: thrown away

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        try:
            await asyncio.sleep(self.delay)  # aiosmtpd cancels this when the connection is lost
        except asyncio.CancelledError:
            self.discarded += 1
            raise
        reader = getattr(server, "_reader", None)  # (a test double may read aiosmtpd's stream)
        if server.transport is None or server.transport.is_closing() or (reader is not None and reader.at_eof()):
            self.discarded += 1  # the client is gone: no one to answer, so nothing is committed
            return "451 4.3.0 lost"
        self.received.append(_received(envelope, session))
        return "250 2.0.0 OK stored"


def _received(envelope: Envelope, session: Session) -> Received:
    return Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.peer)


class Node:
    """One gateway data dir, its ports and its ``relay serve`` process."""

    def __init__(self, tmp: Path, sink_port: int) -> None:
        self.tmp = tmp
        self.sink_port = sink_port
        self.submission = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update({
            "RELAY_DATA_DIR": str(tmp / "data"),
            "RELAY_HOSTNAME": "relay.test",
            "RELAY_SMTP_SUBMISSION": f"127.0.0.1:{self.submission}",
            "RELAY_SMTP_SMTPS": f"127.0.0.1:{free_port()}",
            "RELAY_API_LISTEN": f"127.0.0.1:{free_port()}",
            "RELAY_DELIVERY_POLL_INTERVAL": "0.2",
            "RELAY_DELIVERY_RETRY_BASE": "0.2",
            "RELAY_DELIVERY_RETRY_MAX": "1",
            # short: deliveries go on around the kills instead of waiting for the upstream's breaker
            "RELAY_DELIVERY_BREAKER_COOLDOWN": "0.5",
            "RELAY_DELIVERY_VERIFY_CERTIFICATES": "false",
        })
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.key = ""

    def cli(self, *args: str) -> str:
        res = subprocess.run(["relay", *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"relay {' '.join(args)} failed ({res.returncode}): {res.stdout}{res.stderr}"
        return res.stdout

    def provision(self) -> None:
        self.cli("account", "create", "acme")
        self.cli("domain", "add", "example.com", "--account", "acme")
        self.cli("domain", "verify", "example.com", "--trust")
        self.cli("pool", "add", "sink", "--ip-pool", "default", "--host", "127.0.0.1", "--port",
                 str(self.sink_port), "--encryption", "none")
        self.cli("alias", "add", SENDER, "--account", "acme")
        self.cli("alias", "verify", SENDER)
        self.key = json.loads(self.cli("key", "create", "--account", "acme", "--scopes", "send", "--json"))["key"]
        assert self.key

    async def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        log = open(self.tmp / f"serve{self.starts}.log", "wb")
        self.proc = subprocess.Popen(["relay", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay serve exited with {self.proc.returncode}: {self.log()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.submission)
            except OSError:
                if loop.time() > deadline:
                    raise AssertionError(f"relay serve did not listen in time: {self.log()}") from None
                await asyncio.sleep(0.05)
                continue
            w.close()
            return

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("serve*.log")))

    def pending(self) -> int:
        store = Store(load_settings(None, env=self.env).database_url)
        try:
            counts = store.queue.count_by_state()
        finally:
            store.close()
        return sum(counts.get(s, 0) for s in PENDING)

    def states(self) -> Counter:
        store = Store(load_settings(None, env=self.env).database_url)
        try:
            return Counter(store.queue.count_by_state())
        finally:
            store.close()

    def resent(self) -> int:
        """Recipients sent again after a dot without its reply (each a possible duplicate)."""
        store = Store(load_settings(None, env=self.env).database_url)
        try:
            with store.sessions() as s:
                return s.scalar(sa.select(sa.func.count()).select_from(m.Event)
                                .where(m.Event.reply == RESENT_REPLY)) or 0
        finally:
            store.close()


@contextlib.asynccontextmanager
async def pg_node(tmp_path: Path, pg_url: str, sink: Sink):
    """A Node on PostgreSQL, provisioned, delivering to *sink* (started here); stopped afterwards."""
    await sink.start()
    node = Node(tmp_path, sink.port)
    node.env["RELAY_DATABASE_URL"] = pg_url
    try:
        await asyncio.to_thread(node.provision)
        yield node
    finally:
        node.stop()
        await sink.stop()


async def submit_all(node: Node) -> list[str]:
    """N messages on one connection; every one must get its 250. Returns the Message-IDs."""
    mids = [f"<crash-{i}-{uuid.uuid4().hex}@example.com>" for i in range(N)]
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.submission, start_tls=True, validate_certs=False,
                           timeout=10)
    await smtp.connect()
    await smtp.login("apikey", node.key)
    for i, mid in enumerate(mids):
        raw = (f"From: App <{SENDER}>\r\nTo: r{i}@dest.org\r\nSubject: crash {i}\r\nMessage-ID: {mid}\r\n\r\n"
               f"body {i}\r\n").encode()
        errors, reply = await smtp.sendmail(SENDER, [f"r{i}@dest.org"], raw)
        assert not errors and "queued as msg_" in reply, reply
    await smtp.quit()
    return mids


def counts(sink: Sink, mids: list[str]) -> Counter:
    wanted = set(mids)
    c: Counter = Counter()
    for rec in sink.received:
        mid = (email.message_from_bytes(rec.data, policy=email_policy.compat32).get("Message-ID") or "").strip()
        if mid in wanted:
            c[mid] += 1
    return c


async def wait_settled(node: Node, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while await asyncio.to_thread(node.pending):
        if loop.time() > end:
            raise AssertionError(f"queue not settled: {node.states()}\n{node.log()}")
        await asyncio.sleep(0.1)
