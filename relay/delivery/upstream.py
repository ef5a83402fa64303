"""One upstream relay: a bounded pool of persistent aiosmtplib sessions, and the transaction.

This is the delivery target behind the scheduler (maddy's model: the scheduler hands over an
envelope and a body and gets per-recipient results; it never knows the transport). aiosmtplib
exceptions are mapped to results here, in one place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import aiosmtplib
from aiosmtplib import (SMTPException, SMTPHeloError, SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected,
                        SMTPTimeoutError)

from relay.delivery.commands import dot_stuffed
from relay.delivery.commands import envelope as _envelope
from relay.delivery.dotgate import send_body_and_dot
from relay.delivery.replies import ReplyParser
from relay.delivery.target import DotHooks, TransactionResult, UpstreamUnavailable
from relay.tlsutil import client_context

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class UpstreamConfig:
    id: str
    name: str
    host: str
    port: int
    encryption: str  # tls | ssl | none
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    priority: int = 0
    weight: int = 1
    max_connections: int = 10


class _Conn:
    __slots__ = ("smtp", "last_used", "clean", "used")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.last_used = time.monotonic()
        self.clean = True
        self.used = 0


class Upstream:
    def __init__(self, cfg: UpstreamConfig, *, local_hostname: str, connect_timeout: float,
                 command_timeout: float, idle_timeout: float = 60.0) -> None:
        self.cfg = cfg
        self.local_hostname = local_hostname
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.idle_timeout = idle_timeout
        self._slots = asyncio.Semaphore(cfg.max_connections)
        self._idle: list[_Conn] = []
        self._tls: ssl.SSLContext | None = None
        self.connections_opened = 0
        self.open_connections = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = client_context(verify=self.cfg.verify_tls)
        return self._tls

    async def _open(self) -> _Conn:
        c = self.cfg
        smtp = aiosmtplib.SMTP(hostname=c.host, port=c.port, local_hostname=self.local_hostname,
                               timeout=self.command_timeout, use_tls=c.encryption == "ssl",
                               start_tls=True if c.encryption == "tls" else False,
                               tls_context=self._tls_context() if c.encryption != "none" else None,
                               validate_certs=c.verify_tls)
        try:
            await smtp.connect(timeout=self.connect_timeout)
            if smtp.is_ehlo_or_helo_needed:  # (plain, no AUTH: aiosmtplib would wait for the first MAIL)
                try:
                    await smtp.ehlo()
                except SMTPHeloError:
                    await smtp.helo()
            if c.username:
                await smtp.login(c.username, c.password or "")
        except SMTPResponseException as exc:
            smtp.close()
            raise UpstreamUnavailable(exc.code, exc.message) from None
        except (SMTPException, OSError, asyncio.TimeoutError) as exc:
            smtp.close()
            raise UpstreamUnavailable(None, f"connect to {c.host}:{c.port} failed: {exc}") from None
        self.connections_opened += 1
        self.open_connections += 1
        return _Conn(smtp)

    def _discard(self, conn: _Conn) -> None:
        self.open_connections -= 1
        conn.smtp.close()

    async def _acquire(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.smtp.is_connected and now - conn.last_used < self.idle_timeout:
                return conn
            self._discard(conn)
        return await self._open()

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and conn.smtp.is_connected:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def close_idle(self, max_idle: float | None = None) -> None:
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if max_idle is not None and now - conn.last_used < max_idle and conn.smtp.is_connected:
                keep.append(conn)
            else:
                self._discard(conn)
        self._idle = keep

    async def send(self, mail_from: str, recipients: list[str], body: bytes,
                   on_dot: Callable[[list[str]], DotHooks]) -> TransactionResult:
        """One transaction on a pooled session. A stale reused session is replaced once, silently."""
        async with self._slots:
            for attempt in (0, 1):
                conn = await self._acquire()
                fresh = conn.used == 0
                try:
                    result = await self._transaction(conn, mail_from, recipients, body, on_dot)
                except _Stale:
                    self._discard(conn)
                    if fresh or attempt:
                        raise UpstreamUnavailable(None, "connection lost") from None
                    continue
                except BaseException:  # refused, failed or cancelled: the session's state is unknown
                    self._discard(conn)
                    raise
                conn.used += 1
                self._release(conn, True)
                return result
        raise AssertionError("unreachable")

    async def _transaction(self, conn: _Conn, mail_from: str, recipients: list[str], body: bytes,
                           on_dot: Callable[[list[str]], DotHooks]) -> TransactionResult:
        smtp = conn.smtp
        out = TransactionResult(self.cfg.name)
        try:
            commands = _envelope(mail_from, recipients) if smtp.supports_extension("pipelining") else None
            channel: _Channel = _OneByOne(smtp, self.command_timeout) if commands is None else \
                _Pipelined(smtp, self.command_timeout)
            try:
                await self._exchange(conn, channel, commands, mail_from, recipients, body, on_dot, out)
            finally:
                channel.close()
            return out
        except SMTPServerDisconnected:
            if conn.used and not out.results:
                raise _Stale() from None
            raise UpstreamUnavailable(None, "connection lost") from None
        except SMTPResponseException as exc:
            if exc.code == 421 and conn.used and not out.results:
                raise _Stale() from None
            raise UpstreamUnavailable(exc.code, exc.message) from None
        except (SMTPTimeoutError, asyncio.TimeoutError):
            raise UpstreamUnavailable(None, "timeout") from None
        except (SMTPException, OSError) as exc:
            raise UpstreamUnavailable(None, f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, conn: _Conn, ch: "_Channel", commands: list[bytes] | None, mail_from: str,
                        recipients: list[str], body: bytes, on_dot: Callable[[list[str]], DotHooks],
                        out: TransactionResult) -> None:
        """RSET (after an unfinished transaction), MAIL, RCPT..., DATA, the body. With ``commands``
        (RFC 2920 PIPELINING) everything up to DATA goes in one write and the replies are read in
        order; otherwise aiosmtplib sends each command and reads its reply."""
        smtp = conn.smtp
        if commands is not None:
            ch.write(b"".join(([b"RSET\r\n"] if not conn.clean else []) + commands))
        if not conn.clean:
            code, reply = await ch.call(b"RSET")
            if code != 250:
                raise SMTPResponseException(code, reply)
        conn.clean = False
        if commands is None:
            try:
                await smtp.mail(mail_from)
            except SMTPResponseException as exc:
                code, reply = exc.code, exc.message
            else:
                code, reply = 250, ""
        else:
            code, reply = await ch.call(b"MAIL")
        if code != 250:
            if code == 421 and conn.used:
                raise _Stale()
            raise UpstreamUnavailable(code, reply, permanent=code >= 500)
        accepted = []
        for rcpt in recipients:
            if commands is None:
                try:
                    resp = await smtp.rcpt(rcpt)
                except SMTPResponseException as exc:
                    code, reply = exc.code, exc.message
                else:
                    code, reply = resp.code, resp.message
            else:
                code, reply = await ch.call(b"RCPT")
            if code == 421:
                raise UpstreamUnavailable(code, reply)
            out.results[rcpt] = (code, reply)
            if code in (250, 251):
                accepted.append(rcpt)
        refused = {r: res for r, res in out.results.items() if res[0] >= 500}
        if not accepted:
            if commands is None:
                await smtp.rset()
                conn.clean = True
            elif (await ch.call(b"DATA"))[0] == 354:  # a server that should have refused DATA: end it unsent
                raise UpstreamUnavailable(None, "DATA accepted without any recipient")
            temp = [r for r in recipients if out.results[r][0] < 500]
            if temp:  # nothing taken here and something may go elsewhere: try the next upstream
                code, reply = out.results[temp[0]]
                raise UpstreamUnavailable(code, reply, refused=refused)
            return
        code, reply = await _data(ch, body, lambda: on_dot(accepted))
        if 400 <= code < 500:
            raise UpstreamUnavailable(code, reply, refused=refused)
        for rcpt in accepted:
            out.results[rcpt] = (code, reply)
        conn.clean = True

    async def probe(self) -> dict:
        """The seeds' connection test: EHLO, TLS and AUTH, no mail. {success, message, latencyMs, error}."""
        started = time.monotonic()
        try:
            conn = await self._open()
        except UpstreamUnavailable as exc:
            return {"success": False, "message": "SMTP connection failed",
                    "latencyMs": round((time.monotonic() - started) * 1000), "error": exc.reply}
        latency = round((time.monotonic() - started) * 1000)
        try:
            await conn.smtp.quit()
        except Exception:
            pass
        self._discard(conn)
        return {"success": True, "message": "SMTP connection successful", "latencyMs": latency}


class _Stale(Exception):
    """A reused session turned out dead (timeout, 421 on a pooled session): reconnect and retry."""


async def _data(ch: "_Channel", body: bytes, on_dot: Callable[[], DotHooks]) -> tuple[int, str]:
    """DATA (already written when pipelined), the body and the final dot. ``on_dot`` gives the hooks
    for the moment the dot goes (relay.delivery.dotgate); it is called before the dot is
    written. The store's marker is awaited after the reply, so it is committed before the outcome.

    aiosmtplib's own data() gives no moment at which the dot is known to have left.
    """
    body = dot_stuffed(body)
    code, reply = await ch.call(b"DATA")
    if code != 354:
        return code, reply
    hooks = await send_body_and_dot(ch.transport, ch.write, body, on_dot)
    marker = hooks.after()
    try:
        return await ch.reply()
    finally:
        if marker is not None:
            await marker


class _Channel(Protocol):
    """How a transaction talks to the upstream: ``call`` a command and get its (code, reply),
    ``write`` bytes whose reply ``reply`` then reads."""

    transport: asyncio.WriteTransport

    async def call(self, command: bytes) -> tuple[int, str]: ...

    def write(self, data: bytes) -> None: ...

    async def reply(self) -> tuple[int, str]: ...

    def close(self) -> None: ...


class _OneByOne:
    """aiosmtplib's protocol: one command written, its reply read."""

    def __init__(self, smtp: aiosmtplib.SMTP, timeout: float) -> None:
        protocol = smtp.protocol
        if protocol is None or protocol.transport is None:
            raise SMTPServerDisconnected("Connection lost")
        self._protocol = protocol
        self.transport = protocol.transport
        self._timeout = timeout

    async def call(self, command: bytes) -> tuple[int, str]:
        resp = await self._protocol.execute_command(command, timeout=self._timeout)
        return resp.code, resp.message

    def write(self, data: bytes) -> None:
        self._protocol._response_pending = True  # noqa: SLF001  (what execute_command sets)
        self._protocol.write(data)

    async def reply(self) -> tuple[int, str]:
        resp = await self._protocol.read_response(timeout=self._timeout)
        return resp.code, resp.message

    def close(self) -> None:
        pass


class _Pipelined:
    """RFC 2920: the commands were written at once; ``call`` reads the next reply. The transport's
    protocol is swapped for a :class:`_Replies` for the transaction (aiosmtplib's reads one reply per
    command and drops what arrives early) and given back afterwards."""

    def __init__(self, smtp: aiosmtplib.SMTP, timeout: float) -> None:
        owner = smtp.protocol
        if owner is None or owner.transport is None or owner.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._owner = owner
        self.transport = owner.transport
        self._timeout = timeout
        self._replies = _Replies(owner)
        self.transport.set_protocol(self._replies)

    async def call(self, command: bytes) -> tuple[int, str]:
        return await self._replies.next(self._timeout)

    def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def reply(self) -> tuple[int, str]:
        return await self._replies.next(self._timeout)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.set_protocol(self._owner)


class _Replies(asyncio.Protocol):
    """Every reply the upstream sends, in order, parsed as aiosmtplib parses one (multi-line
    replies joined with newlines, the code of the last line)."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._parser = ReplyParser()
        self._ready: collections.deque[tuple[int, str]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._ready.extend(self._parser.feed(data))
        if self._parser.error is not None:
            self._fail(SMTPResponseException(self._parser.error.code, self._parser.error.message))
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._owner.connection_lost(exc)  # aiosmtplib learns the session is gone

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        while not self._ready:
            if self._error is not None:
                raise self._error
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._ready.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))
