"""SMTP commands and the DATA payload, encoded to bytes: pure, no I/O (aiosmtplib's esmtp.py model)."""

from __future__ import annotations

import re

from aiosmtplib.email import quote_address

RSET = b"RSET\r\n"
DATA = b"DATA\r\n"
DOT = b".\r\n"

_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# dot-atom@domain: what quote_address (email.utils.parseaddr, ~25 us) would return unchanged
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def envelope(mail_from: str, recipients: list[str]) -> list[bytes] | None:
    """MAIL, RCPT... and DATA as one pipelined write; None when an address is not plain ASCII
    that aiosmtplib quotes (its one-by-one path then says what is wrong with it)."""
    addresses = [mail_from, *recipients]
    if any(_CONTROL.search(a) for a in addresses):
        return None
    try:
        quoted = [b"<" + a.encode("ascii") + b">" if not a or _PLAIN.fullmatch(a) else quote_address(a).encode("ascii")
                  for a in addresses]
    except ValueError:  # (UnicodeEncodeError too) aiosmtplib's one-by-one path says what is wrong
        return None
    return [b"MAIL FROM:" + quoted[0] + b"\r\n", *(b"RCPT TO:" + q + b"\r\n" for q in quoted[1:]), DATA]


def dot_stuffed(body: bytes) -> bytes:
    """The body as it goes after DATA's 354, without the final dot: a line starting with a period
    gets a second one (RFC 5321 4.5.2), and the last line ends with CRLF."""
    body = _PERIOD.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body
