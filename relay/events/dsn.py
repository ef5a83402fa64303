"""RFC 3464 delivery status notifications (pure: bytes in, bytes out)."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Sequence


def _headers_only(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[: end + 2]


def is_dsn(body: bytes) -> bool:
    head = _headers_only(body).lower()
    return b"report-type=delivery-status" in head or b"\r\nauto-submitted: auto-replied" in head


def build_dsn(*, hostname: str, queue_id: str, original_sender: str, original: bytes, arrival: str,
              failures: Sequence[tuple[str, str, int | None, str]], dsn_id: str) -> bytes:
    """``failures``: (recipient, action 'failed', code, diagnostic text) per recipient."""
    outer = MIMEMultipart("report", report_type="delivery-status")
    outer["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    outer["To"] = original_sender
    outer["Subject"] = "Undelivered Mail Returned to Sender"
    outer["Date"] = email.utils.formatdate(localtime=False).replace("-0000", "+0000")
    outer["Message-ID"] = f"<{dsn_id}@{hostname}>"
    outer["Auto-Submitted"] = "auto-replied"
    lines = [f"This is the mail system at {hostname}.", "",
             "Your message could not be delivered to one or more recipients:", ""]
    for rcpt, _action, code, text in failures:
        lines.append(f"<{rcpt}>: {code or ''} {text}".rstrip())
    outer.attach(MIMEText("\n".join(lines) + "\n", "plain", "utf-8"))

    per_msg = Message()
    per_msg["Reporting-MTA"] = f"dns; {hostname}"
    per_msg["X-Relay-Queue-ID"] = queue_id
    per_msg["Arrival-Date"] = arrival
    blocks = [per_msg]
    for rcpt, action, code, text in failures:
        diag = f"smtp; {code} {text}" if code else f"x-relay; {text}"
        block = Message()
        block["Final-Recipient"] = f"rfc822; {rcpt}" if rcpt.isascii() else f"utf-8; {utf8_addr_xtext(rcpt)}"
        block["Action"] = action
        block["Status"] = _status(code, text)
        block["Diagnostic-Code"] = " ".join(diag.split())
        blocks.append(block)
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload(blocks)
    outer.attach(status_part)

    headers_part = MIMEBase("text", "rfc822-headers")
    headers = _headers_only(original).decode("utf-8", "replace")
    headers_part.set_payload(headers, charset=None if headers.isascii() else "utf-8")
    outer.attach(headers_part)
    data = outer.as_bytes(policy=EmailMessage().policy.clone(linesep="\r\n"))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 utf-8-addr-xtext: a non-ASCII address in an ASCII DSN field (``jos\\x{E9}@dest.org``)."""
    return "".join(c if " " < c < "\x7f" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address)


def _status(code: int | None, text: str) -> str:
    first = text.split(" ", 1)[0] if text else ""
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
        return first
    if code and 400 <= code < 500:
        return "4.0.0"
    return "5.0.0"
