"""Build the MIME message of an HTTP send (pure: no I/O).

``text`` alone is text/plain, ``html`` alone text/html, both multipart/alternative; attachments
wrap that in multipart/mixed (inline ones with a Content-ID, for ``cid:`` links in the HTML).
Every value that ends up in a header is checked here for CR, LF and NUL (header injection), and
addresses must be plain ASCII ``local@domain``. Message-ID and Date are added by the pipeline.
"""

from __future__ import annotations

import re
from typing import Any
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

from relay.submission.message import to_wire

_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{2,63}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}$")


class ComposeError(ValueError):
    """A value that cannot go into the message; ``field`` names it as the request does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Mailbox:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"
    content_id: str | None = None  # inline part, referenced as cid:<content_id>


@dataclass(frozen=True)
class Draft:
    sender: Mailbox
    to: tuple[Mailbox, ...]
    subject: str
    cc: tuple[Mailbox, ...] = ()
    reply_to: Mailbox | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()


def check_line(value: str, field_name: str) -> str:
    """A header value must stay on one line: CR, LF and NUL are refused (header injection)."""
    if any(c in value for c in "\r\n\x00"):
        raise ComposeError(field_name, "must not contain line breaks or NUL characters")
    return value


def check_address(value: str, field_name: str) -> str:
    """A plain ASCII ``local@domain`` address (no display name, no comments, no line breaks)."""
    check_line(value, field_name)
    value = value.strip()
    if not _ADDRESS.match(value) or ".." in value or value.startswith(".") or ".@" in value:
        raise ComposeError(field_name, f"invalid email address {value[:100]!r}")
    return value


def _mailbox(box: Mailbox, field_name: str) -> Address:
    email = check_address(box.email, f"{field_name}.email")
    name = check_line(box.name or "", f"{field_name}.name").strip()
    local, _, domain = email.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _body(text: str) -> str:
    """Line breaks as LF (the serializer writes CRLF); a lone CR would be a bare line ending."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def compose(draft: Draft) -> bytes:
    """The message as CRLF bytes, ready for :meth:`relay.submission.pipeline.Pipeline.data`."""
    if draft.text is None and draft.html is None:
        raise ComposeError("text", "html or text is required")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _mailbox(draft.sender, "from")
    msg["To"] = [_mailbox(b, f"to.{i}") for i, b in enumerate(draft.to)]
    if draft.cc:
        msg["Cc"] = [_mailbox(b, f"cc.{i}") for i, b in enumerate(draft.cc)]
    if draft.reply_to is not None:
        msg["Reply-To"] = _mailbox(draft.reply_to, "reply_to")
    msg["Subject"] = check_line(draft.subject, "subject")
    if draft.text is not None:
        msg.set_content(_body(draft.text))
        if draft.html is not None:
            msg.add_alternative(_body(draft.html), subtype="html")
    else:
        msg.set_content(_body(draft.html or ""), subtype="html")
    for i, att in enumerate(draft.attachments):
        filename = check_line(att.filename, f"attachments.{i}.filename").strip()
        if not filename:
            raise ComposeError(f"attachments.{i}.filename", "must not be empty")
        if not _CONTENT_TYPE.match(att.content_type or ""):
            raise ComposeError(f"attachments.{i}.content_type", f"invalid content type {att.content_type[:100]!r}")
        maintype, subtype = att.content_type.lower().split("/", 1)
        extra: dict[str, Any] = {}
        if att.content_id is not None:
            if not _CONTENT_ID.match(att.content_id):
                raise ComposeError(f"attachments.{i}.content_id", "invalid content id")
            extra = {"disposition": "inline", "cid": f"<{att.content_id}>"}
        msg.add_attachment(att.content, maintype=maintype, subtype=subtype, filename=filename, **extra)
    for part in msg.walk():
        if part is not msg:  # the email package repeats MIME-Version in the parts it creates
            del part["MIME-Version"]
    return to_wire(msg)
