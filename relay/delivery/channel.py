"""How a transaction writes to an upstream session and reads its replies (protocol I/O; the
replies are parsed by relay.delivery.replies).

:class:`Channel`: for a pipelined transaction the session's transport is lent to a
:class:`ReplyStream` (see relay.delivery.aiosmtplib_compat): every reply the upstream sends is
kept, in order, so that the envelope's commands (RFC 2920) can be written at once and their
replies read one by one; the body and the final dot are written straight to the transport
(relay.delivery.dotgate). :class:`SessionChannel`: a transaction sent one command at a time stays
on aiosmtplib's own protocol (lending the transport costs a restart of reading on uvloop, ~25 us a
transaction, which the pipelined one pays once for its whole envelope).

Failures are raised as aiosmtplib's (the session's) exceptions, or as
:class:`~relay.delivery.replies.ReplyError`; relay.delivery.transaction maps them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import Protocol, cast

import aiosmtplib
from aiosmtplib import SMTPReadTimeoutError, SMTPServerDisconnected

from relay.delivery import aiosmtplib_compat
from relay.delivery.replies import Reply, ReplyParser

aiosmtplib_compat.check()


class BodyChannel(Protocol):
    """What the DATA phase needs: write to the transport, read the next reply."""

    transport: asyncio.WriteTransport

    def write(self, data: bytes) -> None: ...

    def reply(self) -> Awaitable[Reply]: ...


class Channel:
    """Write commands and data; read the replies in order. :meth:`close` gives the transport back."""

    def __init__(self, smtp: aiosmtplib.SMTP, timeout: float) -> None:
        self.transport, self._replies, self._owner = aiosmtplib_compat.lend_transport(smtp, ReplyStream)
        self._timeout = timeout

    def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    def reply(self) -> Awaitable[Reply]:
        """The next reply (one written command's, in order)."""
        return self._replies.next(self._timeout)

    def close(self) -> None:
        aiosmtplib_compat.give_back(self.transport, self._owner)


class SessionChannel:
    """A command and its reply, the body and the final dot's reply, on aiosmtplib's own protocol."""

    def __init__(self, smtp: aiosmtplib.SMTP, timeout: float) -> None:
        protocol = aiosmtplib_compat.session_protocol(smtp)
        self._protocol = protocol
        self.transport = cast(asyncio.WriteTransport, protocol.transport)  # (typed BaseTransport)
        self._timeout = timeout

    async def call(self, command: bytes) -> Reply:
        resp = await self._protocol.execute_command(command, timeout=self._timeout)
        return resp.code, resp.message

    def write(self, data: bytes) -> None:
        aiosmtplib_compat.write_expecting_reply(self._protocol, data)

    async def reply(self) -> Reply:
        resp = await self._protocol.read_response(timeout=self._timeout)
        return resp.code, resp.message


class ReplyStream(asyncio.Protocol):
    """Every reply the upstream sends, in order. Losing the connection is forwarded to ``owner``
    (aiosmtplib's protocol: the session learns that it is gone), and so is flow control."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._parser = ReplyParser()
        self._ready: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._ready.extend(self._parser.feed(data))
        if self._parser.error is not None:
            self._fail(self._parser.error)
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._owner.connection_lost(exc)

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

    async def next(self, timeout: float) -> Reply:
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
