"""One mail transaction on a pooled session: RSET (after an unfinished one), MAIL, RCPT..., DATA, the
body and the final dot; per-recipient results out.

Two ways to talk (:class:`_Pipelined`, :class:`_OneByOne`) behind the same steps, one sequence of
steps (:func:`_exchange`), and the one place where the session's failures - aiosmtplib's
exceptions, OSError, timeouts, a malformed reply - become :class:`UpstreamUnavailable`
(:func:`upstream_error`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from relay.delivery.channel import BodyChannel, Channel, SessionChannel
from relay.delivery.commands import RSET, dot_stuffed, envelope
from relay.delivery.dotgate import send_body_and_dot
from relay.delivery.replies import Reply, ReplyError
from relay.delivery.target import (
    DotHooks,
    OnDot,
    TransactionResult,
    UpstreamUnavailable,
)

SESSION_ERRORS = (SMTPException, ReplyError, OSError, asyncio.TimeoutError)
"""What talking to an upstream can raise; :func:`upstream_error` maps each."""


class StaleSession(Exception):
    """A reused session turned out dead (timeout, 421 on a pooled session): reconnect and retry."""


class Session:
    """A pooled SMTP session: ``clean`` when no transaction is open on it, ``used`` transactions so far."""

    __slots__ = ("clean", "last_used", "smtp", "used")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.last_used = time.monotonic()
        self.clean = True
        self.used = 0


def upstream_error(exc: BaseException, *, connecting_to: str | None = None,
                   maybe_stale: bool = False) -> UpstreamUnavailable | StaleSession:
    """What a failure of the session means for the delivery: the upstream's refusal (with its code),
    or :class:`StaleSession` when a reused session failed before this transaction had any reply
    (``maybe_stale``): then a fresh session gets the transaction. ``connecting_to`` ("host:port"):
    the failure came while the session was being opened."""
    if isinstance(exc, (SMTPResponseException, ReplyError)):
        if exc.code == 421 and maybe_stale:
            return StaleSession()
        return UpstreamUnavailable(exc.code, exc.message)
    if connecting_to is not None:
        return UpstreamUnavailable(None, f"connect to {connecting_to} failed: {exc}")
    if isinstance(exc, SMTPServerDisconnected):
        return StaleSession() if maybe_stale else UpstreamUnavailable(None, "connection lost")
    if isinstance(exc, (SMTPTimeoutError, asyncio.TimeoutError)):
        return UpstreamUnavailable(None, "timeout")
    return UpstreamUnavailable(None, f"{type(exc).__name__}: {exc}")


NO_SMTPUTF8 = (553, "5.6.7 The upstream does not offer SMTPUTF8: a non-ASCII address cannot go through it")


async def transact(session: Session, mail_from: str, recipients: list[str], body: bytes, on_dot: OnDot, *,
                   upstream: str, timeout: float) -> TransactionResult:
    """The transaction on ``session``; raises UpstreamUnavailable or StaleSession when nothing was
    delivered. The caller discards the session on any exception (its state is then unknown).

    A non-ASCII address goes with SMTPUTF8 (RFC 6531) to an upstream that offers it; to one that does
    not, that recipient alone is refused for good (553 5.6.7: it bounces) and the others go."""
    out = TransactionResult(upstream)
    utf8 = not (mail_from.isascii() and all(r.isascii() for r in recipients))
    if utf8 and not session.smtp.supports_extension("smtputf8"):
        out.results.update({r: NO_SMTPUTF8 for r in recipients if not r.isascii() or not mail_from.isascii()})
        recipients = [r for r in recipients if r not in out.results]
        utf8 = False
        if not recipients:
            return out
    try:
        commands = envelope(mail_from, recipients) \
            if session.smtp.supports_extension("pipelining") and not utf8 else None
        steps: _Steps = _OneByOne(session.smtp, mail_from, timeout, utf8=utf8) if commands is None else \
            _Pipelined(session, commands, timeout)
        try:
            await _exchange(session, steps, recipients, body, on_dot, out)
        finally:
            steps.close()
    except SESSION_ERRORS as exc:
        raise upstream_error(exc, maybe_stale=bool(session.used) and not out.results) from None
    return out


async def _exchange(session: Session, steps: _Steps, recipients: list[str], body: bytes, on_dot: OnDot,
                    out: TransactionResult) -> None:
    if not session.clean:
        code, reply = await steps.reset()
        if code != 250:
            raise StaleSession() if code == 421 and session.used else UpstreamUnavailable(code, reply)
    session.clean = False
    code, reply = await steps.mail()
    if code != 250:
        if code == 421 and session.used:
            raise StaleSession()
        raise UpstreamUnavailable(code, reply, permanent=code >= 500)
    accepted = await _add_recipients(steps, recipients, out)
    refused = {r: res for r, res in out.results.items() if res[0] >= 500}
    if not accepted:
        session.clean = await steps.abort()
        temp = [r for r in recipients if out.results[r][0] < 500]
        if temp:  # nothing taken here and something may go elsewhere: try the next upstream
            code, reply = out.results[temp[0]]
            raise UpstreamUnavailable(code, reply, refused=refused)
        return
    code, reply = await _data(steps, body, lambda: on_dot(accepted))
    if 400 <= code < 500:
        raise UpstreamUnavailable(code, reply, refused=refused)
    for rcpt in accepted:
        out.results[rcpt] = (code, reply)
    session.clean = True


async def _add_recipients(steps: _Steps, recipients: list[str], out: TransactionResult) -> list[str]:
    """Every recipient's RCPT reply into ``out``; the accepted ones. A 421 ends the transaction."""
    accepted = []
    for rcpt in recipients:
        code, reply = await steps.rcpt(rcpt)
        if code == 421:
            raise UpstreamUnavailable(code, reply)
        out.results[rcpt] = (code, reply)
        if code in (250, 251):
            accepted.append(rcpt)
    return accepted


async def _data(steps: _Steps, body: bytes, on_dot: Callable[[], DotHooks]) -> Reply:
    """DATA, the body and the final dot; the reply to the dot (or DATA's refusal). ``on_dot`` gives
    the hooks for the moment the dot goes (relay.delivery.dotgate); the store's marker they start
    is awaited after the reply, so it is committed before the outcome.

    aiosmtplib's own data() gives no moment at which the dot is known to have left.
    """
    payload = dot_stuffed(body)
    code, reply = await steps.data()
    if code != 354:
        return code, reply
    channel = steps.channel()
    hooks = await send_body_and_dot(channel.transport, channel.write, payload, on_dot)
    marker = hooks.after()
    try:
        return await channel.reply()
    finally:
        if marker is not None:
            await marker


class _Steps(Protocol):
    """How the commands go: each step returns its command's reply (an awaitable: the pipelined
    steps hand out the channel's own, with no coroutine of theirs in between); :meth:`abort` ends
    a transaction without recipients (True: the session is clean again)."""

    def reset(self) -> Awaitable[Reply]:
        ...

    def mail(self) -> Awaitable[Reply]:
        ...

    def rcpt(self, rcpt: str) -> Awaitable[Reply]:
        ...

    async def abort(self) -> bool:
        ...

    def data(self) -> Awaitable[Reply]:
        ...

    def channel(self) -> BodyChannel:
        """Where the body goes (once :meth:`data` got its 354)."""
        ...

    def close(self) -> None:
        ...


class _Pipelined:
    """RFC 2920: RSET (when needed), MAIL, RCPT... and DATA go in one write, at once; each step
    reads the next reply."""

    def __init__(self, session: Session, commands: list[bytes], timeout: float) -> None:
        self._channel = Channel(session.smtp, timeout)
        self._channel.write(b"".join(([RSET] if not session.clean else []) + commands))

    def reset(self) -> Awaitable[Reply]:
        return self._channel.reply()

    def mail(self) -> Awaitable[Reply]:
        return self._channel.reply()

    def rcpt(self, rcpt: str) -> Awaitable[Reply]:
        return self._channel.reply()

    async def abort(self) -> bool:
        if (await self._channel.reply())[0] == 354:  # a server that should have refused DATA: end it unsent
            raise UpstreamUnavailable(None, "DATA accepted without any recipient")
        return False

    def data(self) -> Awaitable[Reply]:
        return self._channel.reply()

    def channel(self) -> Channel:
        return self._channel

    def close(self) -> None:
        self._channel.close()


class _OneByOne:
    """No PIPELINING (or an address only aiosmtplib can quote, or refuse): aiosmtplib sends each
    command and reads its reply; the body and the final dot are written on its protocol."""

    def __init__(self, smtp: aiosmtplib.SMTP, mail_from: str, timeout: float, *, utf8: bool = False) -> None:
        if not smtp.is_connected:
            raise SMTPServerDisconnected("Connection lost")
        self._smtp = smtp
        self._mail_from = mail_from
        self._timeout = timeout
        self._encoding = "utf-8" if utf8 else "ascii"  # with SMTPUTF8 on MAIL (the upstream offers it)
        self._options = ["SMTPUTF8"] if utf8 else None
        self._channel: SessionChannel | None = None

    async def reset(self) -> Reply:
        resp = await self._smtp.execute_command(b"RSET", timeout=self._timeout)
        return resp.code, resp.message

    async def mail(self) -> Reply:
        try:
            await self._smtp.mail(self._mail_from, options=self._options, encoding=self._encoding)
        except SMTPResponseException as exc:
            return exc.code, exc.message
        return 250, ""

    async def rcpt(self, rcpt: str) -> Reply:
        try:
            resp = await self._smtp.rcpt(rcpt, encoding=self._encoding)
        except SMTPResponseException as exc:
            return exc.code, exc.message
        return resp.code, resp.message

    async def abort(self) -> bool:
        await self._smtp.rset()
        return True

    async def data(self) -> Reply:
        self._channel = SessionChannel(self._smtp, self._timeout)
        return await self._channel.call(b"DATA")

    def channel(self) -> SessionChannel:
        if self._channel is None:
            raise SMTPServerDisconnected("DATA was not sent")
        return self._channel

    def close(self) -> None:
        pass
