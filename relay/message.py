"""Pure message logic: header parsing, line-ending checks, Message-ID/Date, system mail.

No I/O here. Everything takes and returns bytes with CRLF line endings.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32

_HEADER_PARSER = BytesHeaderParser(policy=compat32)


def bare_line_ending(data: bytes) -> bool:
    """True when data holds a CR or LF that is not part of a CRLF pair (SMTP smuggling)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


@dataclass(frozen=True)
class HeaderSummary:
    from_addresses: tuple[str, ...]
    subject: str | None
    message_id: str | None
    has_date: bool
    to_count: int
    cc_count: int
    bcc_count: int
    idempotency_key: str | None = None  # the submitter's Idempotency-Key header (relay.idempotency)


def _addresses(values: list[str]) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def summarize(raw: bytes) -> HeaderSummary:
    """Read just the header block."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    msg = _HEADER_PARSER.parsebytes(head)
    return HeaderSummary(
        from_addresses=tuple(a.lower() for a in _addresses(msg.get_all("From", []))),
        subject=msg.get("Subject"),
        message_id=(msg.get("Message-ID") or "").strip() or None,
        has_date=msg.get("Date") is not None,
        to_count=len(_addresses(msg.get_all("To", []))),
        cc_count=len(_addresses(msg.get_all("Cc", []))),
        bcc_count=len(_addresses(msg.get_all("Bcc", []))),
        idempotency_key=(msg.get("Idempotency-Key") or "").strip() or None,
    )


def make_message_id(queue_id: str, hostname: str) -> str:
    return f"<{queue_id}@{hostname}>"


def complete_headers(raw: bytes, summary: HeaderSummary, queue_id: str, hostname: str) -> tuple[bytes, str]:
    """Add Message-ID and Date when missing (before signing). Returns (message, Message-ID)."""
    extra = b""
    message_id = summary.message_id
    if not message_id:
        message_id = make_message_id(queue_id, hostname)
        extra += b"Message-ID: " + message_id.encode() + b"\r\n"
    if not summary.has_date:
        extra += b"Date: " + email.utils.formatdate(time.time(), usegmt=True).encode() + b"\r\n"
    return (extra + raw if extra else raw), message_id


def strip_bcc(raw: bytes) -> bytes:
    """Drop Bcc header lines (with their continuation lines) from the header block."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or b"bcc:" not in raw[:end].lower():
        return raw
    out, skipping = [], False
    lines = raw[: end + 2].split(b"\r\n")[:-1]
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n" + raw[end + 2:]


def to_wire(msg: EmailMessage) -> bytes:
    """Serialize an EmailMessage with CRLF line endings, as the queue stores bodies."""
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def alias_verification_message(*, sender: str, alias: str, link: str, hostname: str, queue_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Relay <{sender}>"
    msg["To"] = alias
    msg["Subject"] = "Verify your sending address"
    msg["Message-ID"] = make_message_id(queue_id, hostname)
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Someone asked to send mail as {alias} through the Relay gateway at {hostname}.\n\n"
        f"To allow it, open this link:\n\n    {link}\n\n"
        "If you did not ask for this, ignore this message: nothing is sent as this address until it is verified.\n"
    )
    return to_wire(msg)


def parse(raw: bytes) -> EmailMessage:
    """The whole message, parsed (for policies' on_data hook)."""
    from email import policy
    from email.parser import BytesParser

    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]
