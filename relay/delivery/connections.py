"""The sessions of one upstream: a bounded pool of persistent aiosmtplib sessions.

aiosmtplib opens each session (connect, EHLO or HELO, STARTTLS or implicit TLS, AUTH); idle ones
are kept for the next transaction until ``idle_timeout``. At most ``max_connections`` sessions are
in use at once (``slots``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPHeloError

from relay.delivery.target import UpstreamUnavailable
from relay.delivery.transaction import SESSION_ERRORS, Session, upstream_error
from relay.ops.targets import Network, resolve_checked
from relay.ops.tls import client_context
from relay.vocab import Invalid


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
    owner: str | None = None  # the account whose IP pool it serves; None: the operator's (may point anywhere)


class TargetRefused(Exception):
    """An account's upstream host resolved to an address it may not reach (checked before each connect)."""


class SessionPool:
    """Opens, lends and keeps the sessions of one upstream. The timeouts may be changed while it
    runs (a configuration reload); sessions opened from then on use the new ones."""

    def __init__(self, cfg: UpstreamConfig, *, local_hostname: str, connect_timeout: float,
                 command_timeout: float, idle_timeout: float = 60.0, allow_targets: Sequence[Network] = ()) -> None:
        self.cfg = cfg
        self.allow_targets = tuple(allow_targets)  # [security] allow_targets, for an account's upstream
        self.local_hostname = local_hostname
        self.set_timeouts(connect_timeout, command_timeout)
        self.idle_timeout = idle_timeout
        self.slots = asyncio.Semaphore(cfg.max_connections)
        self._idle: list[Session] = []
        self._tls: ssl.SSLContext | None = None
        self.connections_opened = 0
        self.open_connections = 0

    def set_timeouts(self, connect: float, command: float) -> None:
        self.connect_timeout, self.command_timeout = connect, command

    @property
    def name(self) -> str:
        return self.cfg.name

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = client_context(verify=self.cfg.verify_tls)
        return self._tls

    async def _socket(self) -> socket.socket | None:
        """For an account's upstream: a socket connected to the address just checked (public, or in
        ``allow_targets``), so a name that re-resolves elsewhere (DNS rebinding) cannot slip through.
        None for the operator's upstreams: aiosmtplib connects by name."""
        c = self.cfg
        if c.owner is None:
            return None
        try:
            checked = await resolve_checked(c.host, c.port, self.allow_targets, field="host")
        except Invalid as exc:
            raise TargetRefused(str(exc)) from None
        last: BaseException = OSError(f"{c.host} has no address")
        for address in checked.addresses or (checked.address,):  # in the resolver's order, as a client would
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, c.port)),
                                       self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last

    async def connect(self) -> aiosmtplib.SMTP:
        """A session, connected, greeted and authenticated; raises what aiosmtplib raises (SESSION_ERRORS)
        or TargetRefused."""
        c = self.cfg
        sock = await self._socket()
        smtp = aiosmtplib.SMTP(hostname=c.host, port=c.port if sock is None else None, sock=sock,
                               local_hostname=self.local_hostname,
                               timeout=self.command_timeout, use_tls=c.encryption == "ssl",
                               start_tls=c.encryption == "tls",
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
        except BaseException:
            smtp.close()
            if sock is not None:
                sock.close()
            raise
        return smtp

    async def open(self) -> Session:
        c = self.cfg
        try:
            smtp = await self.connect()
        except TargetRefused as exc:
            raise UpstreamUnavailable(None, f"connect to {c.host}:{c.port} refused: the host {exc}") from None
        except SESSION_ERRORS as exc:
            raise upstream_error(exc, connecting_to=f"{c.host}:{c.port}") from None
        self.connections_opened += 1
        self.open_connections += 1
        return Session(smtp)

    def discard(self, session: Session) -> None:
        self.open_connections -= 1
        session.smtp.close()

    async def acquire(self) -> Session:
        """An idle session still connected and not idle for too long, or a new one."""
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()
            if session.smtp.is_connected and now - session.last_used < self.idle_timeout:
                return session
            self.discard(session)
        return await self.open()

    def release(self, session: Session, reusable: bool) -> None:
        if reusable and session.smtp.is_connected:
            session.last_used = time.monotonic()
            self._idle.append(session)
        else:
            self.discard(session)

    def close_idle(self, max_idle: float | None = None) -> None:
        now = time.monotonic()
        keep = []
        for session in self._idle:
            if max_idle is not None and now - session.last_used < max_idle and session.smtp.is_connected:
                keep.append(session)
            else:
                self.discard(session)
        self._idle = keep
