"""The DATA transfer of the SMTP front door, read in blocks instead of line by line.

aiosmtpd 1.4 reads DATA one ``readuntil(b"\\r\\n")`` per line: about fifty awaits, list appends and
checks for a 4 KB message, a tenth of the gateway's CPU per message. :class:`BlockData` reads up to
the terminator ``CRLF.CRLF`` with one ``readuntil`` (the stream's limit is raised to the message size
limit for the transfer), then applies aiosmtpd's rules to the whole block at C speed: the same
replies for a line over ``line_length_limit`` and for more than ``data_size_limit`` bytes, the same
dot-unstuffing, the same hand-over to ``handle_DATA``. tests/gateway/test_fuzz.py feeds both readers the
same bytes in the same random pieces and compares every reply and every message.

Only ``CRLF.CRLF`` ends the transfer (a bare LF before or after the dot does not: no smuggling).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP

from relay.asyncio_compat import set_stream_limit, stream_limit
from relay.smtp.aiosmtpd_compat import SMTPCompat

log = logging.getLogger(__name__)

_END = b"\r\n.\r\n"
_LINE_START = b"\r\n."
_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's wording (relay.smtp.session adds the codes)
_TOO_MUCH = "552 Error: Too much mail data"
_DISCARD = 1 << 16  # the stream's limit while the excess of a message over the limit is discarded


class BlockData(SMTPCompat):
    """aiosmtpd's ``smtp_DATA``, reading the message as one block. A mixin for SMTP subclasses."""

    async def smtp_DATA(self, arg: str) -> None:
        reader = self.stream_reader
        limit = self.data_size_limit
        if self.decode_data or not limit or stream_limit(reader) is None:
            await SMTP.smtp_DATA(self, arg)  # the rare set-ups: aiosmtpd's own reader
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, error = await _read_block(reader, limit, self.line_length_limit)
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self.stream_writer.close()
            raise
        if error is not None:
            await self.push(error)
            self.set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status: Any = await self.call_handler_hook("DATA")
        self.set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


async def _read_block(reader: asyncio.StreamReader, limit: int, line_limit: int) -> tuple[bytes, str | None]:
    """Read up to and including CRLF.CRLF. Returns (unstuffed content, None) or (b"", error reply)."""
    # The CRLF that ended the DATA command may begin the terminator (an empty message, or one of
    # empty lines): take single bytes while what we hold could end in the start of CRLF.CRLF, so the
    # block search below never has to look across what we consumed.
    data = b"\r\n"
    while _may_begin_end(data):
        data += await reader.readexactly(1)
        if data.endswith(_END):
            return _finish(data, limit, line_limit)
    saved = stream_limit(reader)
    assert saved is not None  # (smtp_DATA checked)
    set_stream_limit(reader, limit + line_limit)  # the bound on what is buffered
    try:
        try:
            return _finish(data + await reader.readuntil(_END), limit, line_limit)
        except asyncio.LimitOverrunError as exc:  # more than the limit: decide the reply, keep nothing
            data += await reader.read(exc.consumed)
            error = _TOO_LONG if _too_long(data[2:limit + 2], line_limit) else _TOO_MUCH
            del data
        set_stream_limit(reader, _DISCARD)  # what is thrown away is held in small pieces
        while True:  # read on to the terminator; the last bytes of each piece stay in the buffer
            try:
                await reader.readuntil(_END)
                return b"", error
            except asyncio.LimitOverrunError as exc:
                await reader.read(exc.consumed)
    finally:
        set_stream_limit(reader, saved)


def _may_begin_end(data: bytes) -> bool:
    return data.endswith((b"\r", b"\r\n", b"\r\n.", b"\r\n.\r"))


def _finish(data: bytes, limit: int, line_limit: int) -> tuple[bytes, str | None]:
    """``data``: CRLF, the transfer, CRLF.CRLF. aiosmtpd's checks, then dot-unstuffing (RFC 5321 4.5.2)."""
    content = data[2:-3]
    if len(content) > limit:
        return b"", _TOO_LONG if _too_long(content[:limit], line_limit) else _TOO_MUCH
    if _too_long(content, line_limit):
        return b"", _TOO_LONG
    if data.find(_LINE_START, 0, len(data) - 3) >= 0:  # (not the terminator's own)
        content = data[:-3].replace(_LINE_START, b"\r\n")[2:]
    return content, None


def _too_long(content: bytes, line_limit: int) -> bool:
    """A line, with its CRLF, longer than aiosmtpd's ``line_length_limit``."""
    return len(content) > line_limit - 2 and max(map(len, content.split(b"\r\n"))) > line_limit - 2
