"""Pure message logic: header parsing, line-ending checks, Message-ID/Date, system mail.

No I/O here. Everything takes and returns bytes with CRLF line endings.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
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
    idempotency_key: str | None = None  # the submitter's Idempotency-Key header (relay.submission.idempotency)
    sandbox: bool = False  # X-Relay-Sandbox: true (or the seeds' X-MisarMail-Sandbox)


def _addresses(values: list[str]) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


class MalformedHeader(ValueError):
    """A header block that parsers read differently: refused, so that the From we check is the From
    the recipient sees and the one we sign."""


# a field line: a name of printable ASCII but the colon, then the colon at once (RFC 5322 2.2)
_FIELD_NAME = re.compile(rb"[!-9;-~\x80-\xff]+:")


def check_header_block(raw: bytes) -> None:
    """Every line of the header block is a field (``Name:`` with nothing between the name and the
    colon) or the folding of one; exactly one From field. MalformedHeader otherwise."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    froms = 0
    for line in head.split(b"\r\n"):
        if not line or line[:1] in (b" ", b"\t"):
            continue  # the end, or the folding of the field above
        m = _FIELD_NAME.match(line)
        if m is None:
            name = line.split(b":", 1)[0] if b":" in line else None
            raise MalformedHeader("a header line without a colon" if name is None
                                  else f"blanks between a field name and its colon ({name.strip()[:40]!r})")
        froms += m.group()[:-1].lower() == b"from"
    if froms != 1:
        raise MalformedHeader(f"{froms} From fields (exactly one is required)")


def summarize(raw: bytes) -> HeaderSummary:
    """Read just the header block (the fast path when it can, else the email package)."""
    summary = _summarize_fast(raw)
    return _summarize_slow(raw) if summary is None else summary


def summarize_strict(raw: bytes) -> HeaderSummary:
    """:func:`summarize` for a submission: a block the fast path does not take (the fast path takes
    only well-formed ones) is checked first (:func:`check_header_block`), MalformedHeader."""
    summary = _summarize_fast(raw)
    if summary is None:
        check_header_block(raw)
        return _summarize_slow(raw)
    return summary


def _summarize_slow(raw: bytes) -> HeaderSummary:
    """The reference: compat32 header parsing and email.utils.getaddresses."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    msg = _HEADER_PARSER.parsebytes(head)
    return HeaderSummary(
        from_addresses=tuple(a.lower() for a in _addresses(msg.get_all("From", []))),
        subject=_text(msg, "Subject"),
        message_id=(_text(msg, "Message-ID") or "").strip() or None,
        has_date=msg.get("Date") is not None,
        to_count=len(_addresses(msg.get_all("To", []))),
        cc_count=len(_addresses(msg.get_all("Cc", []))),
        bcc_count=len(_addresses(msg.get_all("Bcc", []))),
        idempotency_key=(_text(msg, "Idempotency-Key") or "").strip() or None,
        sandbox=any(_truthy(_text(msg, name)) for name in SANDBOX_FIELDS),
    )


SANDBOX_FIELDS = ("X-Relay-Sandbox", "X-MisarMail-Sandbox")
CONTROL_FIELDS = (b"bcc", b"idempotency-key", b"x-relay-sandbox", b"x-misarmail-sandbox")
"""Fields that speak to Relay, not to the recipient: removed before signing and relaying."""


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def _text(msg: Message, name: str) -> str | None:
    """The first ``name`` field as text. compat32's ``get`` gives an ``email.header.Header`` for
    8-bit (SMTPUTF8) values, which is not a str; the raw value is the same str for ASCII."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return None


# The fast path takes only plain header blocks, where it gives what _summarize_slow gives:
# printable ASCII and tabs, CRLF only, every line a "Name: value" field or its folding.
# compat32 keeps a value as sent, minus the blanks after the colon, folding CRLFs included.
# The last alternative takes whatever is left at the first spot that is not such a field.
# (Possessive quantifiers, here and below, keep the matching linear on hostile input.)
_FIELDS = re.compile(r"([!-9;-~]++):[ \t]*+([\t -~]*+(?:\r\n[ \t][\t -~]*+)*+)\r\n|([\s\S]+)")
# One mailbox of an address list: addr-spec or [phrase] <addr-spec>, where the phrase has atoms,
# dots, blanks and quoted strings (no backslash, no folding inside); no comments, groups,
# domain literals, quoted local parts or route addresses. Anything else goes the slow way.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]++"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*+@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*+"
_PHRASE = r"""(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~. \t\r\n-]|"[^"\\\r\n]*+")*+"""
_MAILBOX = rf"[ \t\r\n]*+(?:({_ADDR_SPEC})|{_PHRASE}<({_ADDR_SPEC})>)[ \t\r\n]*+"
# Mailboxes separated by commas (no empty element, no trailing comma), or else the rest.
_MAILBOXES = re.compile(rf"{_MAILBOX}(?:,(?!\Z)|\Z)|([\s\S]+)")
_ADDRESS_FIELDS = ("from", "to", "cc", "bcc")


def _addresses_fast(values: list[str]) -> list[str] | None:
    """getaddresses' non-empty addresses, for simple address lists only (else None).

    Blank fields give none; next to non-blank ones they are left to getaddresses, whose strict
    mode (Python 3.12+, and recent 3.11 releases) may then discard every address of the list.
    """
    out: list[str] = []
    blank = False
    for value in values:
        if not value.strip():
            blank = True
            continue
        for bare, angle, rest in _MAILBOXES.findall(value):
            if rest:
                return None
            out.append(bare or angle)
    return None if blank and out else out


def _summarize_fast(raw: bytes) -> HeaderSummary | None:
    """summarize for plain header blocks; None when the block is not plain (see above)."""
    end = raw.find(b"\r\n\r\n")
    if end <= 0:  # no blank line, or one first: rare, left to the email package
        return None
    head = raw[: end + 2]
    if not head.isascii():
        return None
    first: dict[str, str] = {}
    lists: dict[str, list[str]] = {name: [] for name in _ADDRESS_FIELDS}
    for name, value, rest in _FIELDS.findall(head.decode("ascii")):
        if rest:
            return None
        name = name.lower()
        if name not in first:
            first[name] = value
        if name in lists:
            lists[name].append(value)
    found = [_addresses_fast(lists[name]) for name in _ADDRESS_FIELDS]
    from_, to, cc, bcc = found
    if from_ is None or to is None or cc is None or bcc is None:
        return None
    return HeaderSummary(
        from_addresses=tuple(a.lower() for a in from_),
        subject=first.get("subject"),
        message_id=first.get("message-id", "").strip() or None,
        has_date="date" in first,
        to_count=len(to),
        cc_count=len(cc),
        bcc_count=len(bcc),
        idempotency_key=first.get("idempotency-key", "").strip() or None,
        sandbox=any(_truthy(first.get(name.lower())) for name in SANDBOX_FIELDS),
    )


def make_message_id(queue_id: str, hostname: str) -> str:
    return f"<{queue_id}@{hostname}>"


def complete_headers(raw: bytes, summary: HeaderSummary, queue_id: str, domain: str) -> tuple[bytes, str]:
    """Add Message-ID (on ``domain``, the From domain) and Date (numeric zone) when missing, before
    signing. Returns (message, Message-ID)."""
    extra = b""
    message_id = summary.message_id
    if not message_id:
        message_id = make_message_id(queue_id, domain)
        extra += b"Message-ID: " + message_id.encode() + b"\r\n"
    if not summary.has_date:
        extra += b"Date: " + rfc5322_date().encode() + b"\r\n"
    return (extra + raw if extra else raw), message_id


def rfc5322_date(when: float | None = None) -> str:
    """``Thu, 03 Dec 2026 14:00:00 +0000``: a numeric zone (RFC 5322 3.3; "GMT" is obsolete)."""
    return email.utils.formatdate(time.time() if when is None else when, localtime=False).replace("-0000", "+0000")


_HELO = re.compile(r"[A-Za-z0-9.:_\[\]-]{1,255}")


def received_header(*, helo: str | None, client: str | None, hostname: str, protocol: str, queue_id: str,
                    when: float | None = None) -> bytes:
    """The trace field of RFC 5321 4.4 (``with`` as RFC 3848: ESMTPSA...). ``client`` None: the client's
    address and name are left out (``smtp.hide_client_address``)."""
    head = b"Received: "
    if client is not None:
        name = helo if helo and _HELO.fullmatch(helo) else None
        head += (f"from {name} ([{client}])" if name else f"from [{client}]").encode() + b"\r\n\t"
    return head + (f"by {hostname} (Relay) with {protocol} id {queue_id};\r\n\t"
                   f"{rfc5322_date(when)}\r\n").encode()


def strip_fields(raw: bytes, names: tuple[bytes, ...] = CONTROL_FIELDS) -> bytes:
    """Drop the header fields named ``names`` (lower case; with their continuation lines)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw
    head = raw[: end + 2].lower()
    if not any(n + b":" in head for n in names):
        return raw
    out, skipping = [], False
    lines = raw[: end + 2].split(b"\r\n")[:-1]
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.split(b":", 1)[0].lower() in names
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n" + raw[end + 2:]


def strip_bcc(raw: bytes) -> bytes:
    """Drop Bcc header lines (with their continuation lines) from the header block."""
    return strip_fields(raw, (b"bcc",))


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
    msg["Date"] = rfc5322_date()
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

    return BytesParser(policy=policy.default).parsebytes(raw)
