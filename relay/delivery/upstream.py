"""One upstream relay: a bounded pool of persistent aiosmtplib sessions, and the transaction.

This is the delivery target behind the scheduler (maddy's model: the scheduler hands over an
envelope and a body and gets per-recipient results; it never knows the transport). aiosmtplib
exceptions are mapped to results here, in one place.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import operator
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError

from relay.tlsutil import client_context

log = logging.getLogger(__name__)

_PERIOD = re.compile(rb"(?m)^\.")


class UpstreamUnavailable(Exception):
    """The upstream did not take the message (connect failure, 421, 4xx/5xx before DATA was accepted,
    drop): nothing was delivered, so the same attempt may try the next upstream."""

    def __init__(self, code: int | None, reply: str, *, permanent: bool = False,
                 refused: dict[str, tuple[int, str]] | None = None) -> None:
        super().__init__(reply)
        self.code = code
        self.reply = reply
        self.permanent = permanent
        self.refused = refused or {}  # recipients this upstream refused for good (5xx at RCPT)


@dataclass
class TransactionResult:
    """Per-recipient (code, reply); ``upstream`` names who answered."""

    upstream: str
    results: dict[str, tuple[int, str]] = field(default_factory=dict)


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
                except UpstreamUnavailable:
                    self._discard(conn)
                    raise
                except BaseException:
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
            if not conn.clean:
                await smtp.rset()
            conn.clean = False
            try:
                await smtp.mail(mail_from)
            except SMTPResponseException as exc:
                if exc.code == 421 and conn.used:
                    raise _Stale() from None
                raise UpstreamUnavailable(exc.code, exc.message, permanent=exc.code >= 500) from None
            accepted = []
            for rcpt in recipients:
                try:
                    resp = await smtp.rcpt(rcpt)
                except SMTPResponseException as exc:
                    if exc.code == 421:
                        raise UpstreamUnavailable(exc.code, exc.message) from None
                    out.results[rcpt] = (exc.code, exc.message)
                else:
                    accepted.append(rcpt)
                    out.results[rcpt] = (resp.code, resp.message)
            refused = {r: res for r, res in out.results.items() if res[0] >= 500}
            if not accepted:
                await smtp.rset()
                conn.clean = True
                temp = [r for r in recipients if out.results[r][0] < 500]
                if temp:  # nothing taken here and something may go elsewhere: try the next upstream
                    code, reply = out.results[temp[0]]
                    raise UpstreamUnavailable(code, reply, refused=refused)
                return out
            code, reply = await _data(smtp, body, lambda: on_dot(accepted),
                                      self.command_timeout)
            if 400 <= code < 500:
                conn.clean = False
                raise UpstreamUnavailable(code, reply, refused=refused)
            for rcpt in accepted:
                out.results[rcpt] = (code, reply)
            conn.clean = True
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


class _DotGate:
    """Holds the final dot in the kernel until the process lets it go (Linux).

    The body and the dot are written at once, but TCP_CORK keeps the last partial frame (the dot)
    back while the body drains, and SO_LINGER(on, 0) makes any close - a crash of this process
    included - a reset that discards it. ``release`` uncorks and journals the dot
    (relay.delivery.journal) in one C-level call chain: the two system calls follow each other with
    no Python bytecode between them, so no other thread can take the GIL in the gap. A crash thus
    leaves either no dot at the upstream and no record (the message is sent again), or both; the
    gap between the two system calls can at worst cause a second copy, never a loss. Elsewhere (no
    TCP_CORK) the window is the time the dot takes to leave the process's write buffer.
    """

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.active = self.fd >= 0 and _setsockopt is not None

    def arm(self) -> bool:
        if self.active:
            self.active = (_setsockopt(self.fd, socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET, 8) == 0
                           and _setsockopt(self.fd, socket.IPPROTO_TCP, socket.TCP_CORK, _ONE, 4) == 0)
        return self.active

    def release(self, journal: Callable[[], object]) -> None:
        """Let the dot go (a normal close from here on: a crash now must not reset the connection,
        or the peer would drop the unread dot), then call ``journal`` - a C callable, see above."""
        list(map(operator.call, (functools.partial(_setsockopt, self.fd, socket.SOL_SOCKET, socket.SO_LINGER,
                                                   _LINGER_OFF, 8),
                                 functools.partial(_setsockopt, self.fd, socket.IPPROTO_TCP, socket.TCP_CORK, _ZERO, 4),
                                 journal)))


def _libc_setsockopt() -> Callable[..., int] | None:
    """setsockopt(2) through ctypes.PyDLL, which keeps the GIL across the call."""
    if not hasattr(socket, "TCP_CORK"):
        return None
    try:
        fn = ctypes.PyDLL(None).setsockopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_setsockopt = _libc_setsockopt()
_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
_ONE = struct.pack("i", 1)
_ZERO = struct.pack("i", 0)


@dataclass
class DotHooks:
    """What the scheduler does the moment a dot goes: ``journal`` is a C callable (a
    functools.partial of os.write) run in the same call chain as the release; ``after`` then
    starts the store's marker, awaited once the reply is in."""

    journal: Callable[[], object]
    after: Callable[[], Awaitable[None] | None]


async def _drained(transport: asyncio.WriteTransport) -> None:
    while transport.get_write_buffer_size():  # the rest of the body is still in our buffer
        await asyncio.sleep(0.001)


async def _data(smtp: aiosmtplib.SMTP, body: bytes, on_dot: Callable[[], DotHooks],
                timeout: float) -> tuple[int, str]:
    """DATA, the body and the final dot. ``on_dot`` gives the hooks for the moment the dot goes
    (see _DotGate and DotHooks); the store's marker is awaited after the reply, so it is committed
    before the outcome.

    aiosmtplib's own data() gives no moment at which the dot is known to have left.
    """
    protocol = smtp.protocol
    if protocol is None or protocol._command_lock is None or protocol.transport is None:  # noqa: SLF001
        raise SMTPServerDisconnected("Connection lost")
    body = _PERIOD.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    transport = protocol.transport
    async with protocol._command_lock:  # noqa: SLF001
        protocol._response_pending = True  # noqa: SLF001
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response(timeout=timeout)
        if start.code != 354:
            return start.code, start.message
        gate = _DotGate(transport)
        corked = gate.arm()
        protocol._response_pending = True  # noqa: SLF001
        protocol.write(body + b".\r\n")
        try:
            await _drained(transport)
        except BaseException:
            if corked:
                transport.abort()  # reset: the held dot is discarded, the upstream takes nothing
            raise
        hooks = on_dot()
        if corked:
            gate.release(hooks.journal)
        else:
            hooks.journal()
        marker = hooks.after()
        try:
            resp = await protocol.read_response(timeout=timeout)
        finally:
            if marker is not None:
                await marker
    return resp.code, resp.message
