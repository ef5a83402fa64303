"""The sessions of one upstream: a bounded pool of persistent aiosmtplib sessions.

aiosmtplib opens each session (connect, EHLO or HELO, STARTTLS or implicit TLS, AUTH); idle ones
are kept for the next transaction until ``idle_timeout``. At most ``max_connections`` sessions are
in use at once (``slots``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPHeloError

from relay.delivery.target import UpstreamUnavailable
from relay.delivery.transaction import SESSION_ERRORS, Session, upstream_error
from relay.ops.tls import client_context


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


class SessionPool:
    """Opens, lends and keeps the sessions of one upstream. The timeouts may be changed while it
    runs (a configuration reload); sessions opened from then on use the new ones."""

    def __init__(self, cfg: UpstreamConfig, *, local_hostname: str, connect_timeout: float,
                 command_timeout: float, idle_timeout: float = 60.0) -> None:
        self.cfg = cfg
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

    async def open(self) -> Session:
        c = self.cfg
        smtp = aiosmtplib.SMTP(hostname=c.host, port=c.port, local_hostname=self.local_hostname,
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
        except SESSION_ERRORS as exc:
            smtp.close()
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

    async def probe(self) -> dict[str, Any]:
        """The seeds' connection test: EHLO, TLS and AUTH, no mail. {success, message, latencyMs, error}."""
        started = time.monotonic()
        try:
            session = await self.open()
        except UpstreamUnavailable as exc:
            return {"success": False, "message": "SMTP connection failed",
                    "latencyMs": round((time.monotonic() - started) * 1000), "error": exc.reply}
        latency = round((time.monotonic() - started) * 1000)
        try:
            await session.smtp.quit()
        except Exception:  # noqa: BLE001, S110  (the test is over: a failed QUIT changes nothing)
            pass
        self.discard(session)
        return {"success": True, "message": "SMTP connection successful", "latencyMs": latency}
