"""``relay serve`` as systemd runs it: a real process, a real notify socket, real signals.

Each test provisions a data dir in process (account, domain, alias, upstream = a Sink in the test's
loop, API key), starts ``relay --config FILE serve`` with ``NOTIFY_SOCKET`` pointing at a datagram
socket the test reads, and drives it with SMTP clients and signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509

from relay.ops.config import load_settings
from relay.gateway import Gateway
from relay.store import Store
from relay.store import models as m
from relay.ops.tls import generate_self_signed
from tests.conftest import free_port, provision, wait_for
from tests.gateway.test_ops import SHUTTING_DOWN, Raw

SENDER = "app@example.com"
BODY = b"From: App <app@example.com>\r\nTo: r@dest.org\r\nSubject: %s\r\n\r\nhello\r\n"


class Notify:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket whose messages the test reads."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="relay-notify-", dir="/tmp")  # AF_UNIX paths are short
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def expect(self, field: str, timeout: float = 15.0) -> list[str]:
        """Wait for a datagram holding *field* (e.g. ``READY=1``); returns all messages read so far."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not any(field in m.split("\n") for m in self.seen):
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"no {field} on the notify socket; got {self.seen}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), left)
            except asyncio.TimeoutError:
                continue
            self.seen.append(data.decode())
        return self.seen

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Service:
    """One provisioned data dir and its ``relay serve`` process."""

    def __init__(self, tmp: Path, sink_port: int, *, workers: int = 1, tls: tuple[Path, Path] | None = None,
                 extra: str = "") -> None:
        self.tmp = tmp
        self.submission, self.smtps, self.api = free_port(), free_port(), free_port()
        self.config = tmp / "relay.toml"
        tls_table = f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n' if tls else ""
        self.config.write_text(f"""
data_dir = "{tmp / 'data'}"
hostname = "relay.test"
[smtp]
submission = "127.0.0.1:{self.submission}"
smtps = "127.0.0.1:{self.smtps}"
workers = {workers}
{extra}
[api]
listen = "127.0.0.1:{self.api}"
[delivery]
poll_interval = 0.2
retry_base = 0.2
retry_max = 1
verify_certificates = false
[log]
format = "json"
{tls_table}""")
        settings = load_settings(self.config, env={})
        gw = Gateway(settings, env={})
        self.key = provision(gw, sink_port).key
        gw.runner.shutdown()
        gw.store.close()
        self.notify = Notify()
        self.proc: subprocess.Popen | None = None
        self.out = tmp / "relay.out"

    def start(self, **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "NOTIFY_", "WATCHDOG_"))}
        base.update(NOTIFY_SOCKET=self.notify.path, **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "relay.cli.main", "--config", str(self.config), "serve"],
                                     env=base, stdout=self.out.open("wb"), stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > end:
                raise AssertionError("relay serve did not exit in time:\n" + self.output())
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


@pytest.fixture
async def service(tmp_path, sink_factory):
    made: list[Service] = []

    async def make(**kw) -> tuple[Service, object]:
        sink = await sink_factory()
        (tmp_path / f"svc{len(made)}").mkdir()
        svc = Service(tmp_path / f"svc{len(made)}", sink.port, **kw)
        made.append(svc)
        return svc, sink

    yield make
    for svc in made:
        svc.stop()


def peer_cert_name(writer: asyncio.StreamWriter) -> str:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


async def smtps_cert(port: int) -> str:
    raw = await Raw.open(port)
    try:
        return peer_cert_name(raw.writer)
    finally:
        raw.close()


async def starttls_cert(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    assert (await raw.reply()).startswith("220")
    assert (await raw.cmd("EHLO client.test")).startswith("250")
    assert (await raw.cmd("STARTTLS")).startswith("220")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    await writer.start_tls(ctx)
    try:
        return peer_cert_name(writer)
    finally:
        writer.close()


def write_cert(cert: Path, key: Path, name: str) -> None:
    c, k = generate_self_signed(name)
    key.write_bytes(k)
    cert.write_bytes(c)


# -- systemd notify ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
async def test_ready_only_when_listening_then_watchdog_then_stopping(service, workers):
    svc, _sink = await service(workers=workers)
    svc.start(WATCHDOG_USEC="400000")  # ping every 0.2 s
    await svc.notify.expect("READY=1")
    # READY means every listener is bound and the store migrated: all answer right now
    for port in (svc.submission, svc.smtps):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"http://127.0.0.1:{svc.api}/healthz")).status_code == 200
        assert (await c.get(f"http://127.0.0.1:{svc.api}/readyz")).json()["status"] == "ready"
    await svc.notify.expect("WATCHDOG=1")
    svc.signal(signal.SIGTERM)
    seen = await svc.notify.expect("STOPPING=1")
    assert [m for m in seen if "READY=1" in m.split("\n")] == [seen[0]]  # READY came first, once
    assert await svc.exited() == 0
    lines = svc.log_lines()  # [log] format = "json": every line of the process parses
    assert any(r["message"] == "stopped" for r in lines)


# -- SIGHUP --------------------------------------------------------------------------------------
async def test_sighup_swaps_the_certificate_and_keeps_open_sessions(service, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_cert(cert, key, "old.relay.test")
    svc, sink = await service(tls=(cert, key))
    svc.start()
    await svc.notify.expect("READY=1")
    assert await smtps_cert(svc.smtps) == "old.relay.test"
    open_session = await Raw.open(svc.smtps, svc.key)
    assert peer_cert_name(open_session.writer) == "old.relay.test"

    write_cert(cert, key, "new.relay.test")  # renewed in place, as certbot does
    svc.signal(signal.SIGHUP)
    await svc.notify.expect("RELOADING=1")
    svc.notify.seen.clear()
    await svc.notify.expect("READY=1")

    assert await smtps_cert(svc.smtps) == "new.relay.test"  # the next connection: the new certificate
    assert await starttls_cert(svc.submission) == "new.relay.test"  # STARTTLS too
    # the session opened before the reload goes on, and its message is taken and delivered
    await open_session.start_data(SENDER, "r@dest.org")
    open_session.writer.write(BODY % b"after-reload" + b".\r\n")
    assert (await open_session.reply()).startswith("250 2.0.0 OK queued as msg_")
    assert (await open_session.cmd("QUIT")).startswith("221")
    await wait_for(lambda: any(b"after-reload" in m.data for m in sink.received))
    svc.signal(signal.SIGTERM)
    assert await svc.exited() == 0
    reloaded = [r for r in svc.log_lines() if r["message"] == "reloaded"]
    assert reloaded and reloaded[0]["certificate"] == str(cert)


# -- SIGTERM -------------------------------------------------------------------------------------
async def test_sigterm_during_data_lets_the_transaction_finish_and_hands_it_back(service):
    """The open transaction gets its 250; its message is not attempted by the stopping node but
    handed back to the store (as Postfix's stop leaves its queue): the next start delivers it."""
    svc, sink = await service()
    svc.start()
    await svc.notify.expect("READY=1")
    sending = await Raw.open(svc.smtps, svc.key)
    idle = await Raw.open(svc.smtps, svc.key)
    await sending.start_data(SENDER, "r@dest.org")
    first, rest = (BODY % b"during-sigterm").split(b"\r\n\r\n")
    sending.writer.write(first + b"\r\n")
    await sending.writer.drain()

    svc.signal(signal.SIGTERM)
    await svc.notify.expect("STOPPING=1")
    assert (await idle.reply(timeout=5)).startswith(SHUTTING_DOWN)  # idle sessions are told at once
    with pytest.raises(OSError):  # no new connections
        await Raw.open(svc.smtps)
    await asyncio.sleep(0.3)
    assert svc.proc.poll() is None  # still waiting for the open transaction

    sending.writer.write(b"\r\n" + rest + b".\r\n")
    queued = await sending.reply()
    assert queued.startswith("250 2.0.0 OK queued as msg_"), queued
    queue_id = queued.rsplit(" ", 1)[1]
    assert (await sending.reply(timeout=5)).startswith(SHUTTING_DOWN)  # then that session is closed too
    assert await svc.exited() == 0
    assert not [m for m in sink.received if b"during-sigterm" in m.data]  # not attempted while stopping
    store = Store(load_settings(svc.config, env={}).database_url)
    try:
        with store.sessions() as s:
            rows = s.execute(sa.select(m.Recipient.state, m.Recipient.lease_owner)
                             .where(m.Recipient.message_id == queue_id)).all()
        assert [tuple(r) for r in rows] == [("queued", None)]  # kept, and free for any node
    finally:
        store.close()
    svc.start()  # the next start delivers it
    await svc.notify.expect("READY=1")
    await wait_for(lambda: any(b"during-sigterm" in m.data for m in sink.received), timeout=20)


async def test_second_sigterm_exits_at_once_and_keeps_what_was_accepted(service):
    svc, sink = await service(extra="shutdown_timeout = 60")
    sink.data_replies = ["451 4.3.0 not now"] * 100  # nothing leaves: the queue must keep it
    svc.start()
    await svc.notify.expect("READY=1")
    done = await Raw.open(svc.smtps, svc.key)
    await done.start_data(SENDER, "r@dest.org")
    done.writer.write(BODY % b"accepted" + b".\r\n")
    accepted = (await done.reply()).rsplit(" ", 1)[1]
    hanging = await Raw.open(svc.smtps, svc.key)
    await hanging.start_data(SENDER, "r@dest.org")
    hanging.writer.write(b"From: App <app@example.com>\r\n")
    await hanging.writer.drain()

    loop = asyncio.get_running_loop()
    svc.signal(signal.SIGTERM)
    await svc.notify.expect("STOPPING=1")
    await asyncio.sleep(0.3)
    assert svc.proc.poll() is None  # the first one waits (up to 60 s) for the open transaction
    started = loop.time()
    svc.signal(signal.SIGTERM)
    assert await svc.exited(timeout=5) == 0
    assert loop.time() - started < 2
    store = Store(load_settings(svc.config, env={}).database_url)
    try:
        ids = [m.id for m in store.queue.list_messages() if m.source == "smtp"]
        assert ids == [accepted]  # the 250'd message is there; the unfinished one never was
    finally:
        store.close()
