"""relay.submission.compose: the MIME structure of an HTTP send, and header injection refused (pure, no I/O)."""

from __future__ import annotations

import email
from email import policy

import pytest

from relay.submission.compose import Attachment, ComposeError, Draft, Mailbox, compose
from relay.submission.message import bare_line_ending

TO = (Mailbox("user@dest.org", "Ünïcode User"),)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def test_text_html_and_attachments():
    raw = compose(Draft(Mailbox("app@example.com", "App"), TO, "Grüße", text="a\r\nb\rc\n", html="<p>x</p>",
                        attachments=(Attachment("r.csv", b"a,b\n", "text/csv"),)))
    assert not bare_line_ending(raw) and raw.count(b"MIME-Version") == 1
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/mixed" and msg["Subject"] == "Grüße"
    alt, att = list(msg.iter_parts())
    assert [p.get_content_type() for p in alt.iter_parts()] == ["text/plain", "text/html"]
    assert list(alt.iter_parts())[0].get_content().replace("\r\n", "\n") == "a\nb\nc\n"
    assert att.get_filename() == "r.csv" and att.get_content() == "a,b\n"
    assert msg["To"] == "Ünïcode User <user@dest.org>"


@pytest.mark.parametrize("draft, field", [
    (Draft(Mailbox("app@example.com", "A\r\nBcc: x@y.org"), TO, "s", text="t"), "from.name"),
    (Draft(Mailbox("app@example.com"), (Mailbox("u@dest.org\nBcc: x@y.org"),), "s", text="t"), "to.0.email"),
    (Draft(Mailbox("app@example.com"), TO, "s\rX: y", text="t"), "subject"),
    (Draft(Mailbox("app@example.com"), TO, "s", cc=(Mailbox("c@d.org", "N\x00"),), text="t"), "cc.0.name"),
    (Draft(Mailbox("app@example.com"), TO, "s", reply_to=Mailbox("a b@c.org"), text="t"), "reply_to.email"),
    (Draft(Mailbox("app@example.com"), TO, "s", text="t", attachments=(Attachment("a\n", b""),)),
     "attachments.0.filename"),
    (Draft(Mailbox("app@example.com"), TO, "s", text="t", attachments=(Attachment("a", b"", "text"),)),
     "attachments.0.content_type"),
    (Draft(Mailbox("app@example.com"), TO, "s"), "text"),
])
def test_refusals_name_the_field(draft, field):
    with pytest.raises(ComposeError) as exc:
        compose(draft)
    assert exc.value.field == field
