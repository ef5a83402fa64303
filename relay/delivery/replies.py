"""SMTP replies, parsed from bytes: pure, no I/O (aiosmtplib's response parsing, made incremental).

A pipelined transaction (RFC 2920) gets the replies to several commands in one read, or one reply
split over many reads; :class:`ReplyParser` takes the bytes as they come and hands out every
complete reply, in order. Each is parsed as aiosmtplib parses one: the code of the last line, the
lines' texts (after the code and its separator, stripped) joined with newlines.
"""

from __future__ import annotations

MAX_REPLY_LINE = 8192  # aiosmtplib's MAX_LINE_LENGTH
MAX_PENDING = 4 * MAX_REPLY_LINE  # bytes of an incomplete reply (aiosmtplib's MAX_RESPONSE_LENGTH)

Reply = tuple[int, str]


class ReplyError(Exception):
    """The upstream's bytes are not an SMTP reply. ``code`` is -1, as aiosmtplib reports it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = -1
        self.message = message


class ReplyParser:
    """Bytes in, complete replies out. After a malformed reply nothing more is parsed: ``error``
    says what was wrong (the replies before it were still handed out)."""

    __slots__ = ("_buf", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: ReplyError | None = None

    def feed(self, data: bytes) -> list[Reply]:
        """Add ``data``; return the replies it completes, in order (often none, often one)."""
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        out: list[Reply] = []
        try:
            while (reply := take_reply(buf)) is not None:
                out.append(reply)
        except ReplyError as exc:
            self.error = exc
            return out
        if len(buf) > MAX_PENDING:
            self.error = ReplyError("Response too long")
        return out


def take_reply(buf: bytearray) -> Reply | None:
    """One complete reply off the front of ``buf`` (removed from it), or None if it is not all in."""
    offset, lines, code = 0, [], -1
    while True:
        end = buf.find(b"\n", offset)
        if end < 0:
            return None
        line = bytes(buf[offset:end + 1])
        if len(line) > MAX_REPLY_LINE:
            raise ReplyError("Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            raise ReplyError("Malformed SMTP response line: " + line.decode("utf-8", "ignore")) from None
        offset = end + 1
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            del buf[:offset]
            # (aiosmtplib starts the text at the first line with any: leading empty lines drop out)
            return code, b"\n".join(lines).lstrip(b"\n").decode("utf-8", "surrogateescape")
