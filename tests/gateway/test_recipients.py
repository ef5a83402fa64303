"""Recipients are checked at RCPT: what delivery could not send is refused at once, with the
right code, and never stored."""

from __future__ import annotations

import pytest

from tests.conftest import port_of, provision
from tests.gateway.test_submission import RawSMTP, auth_plain_arg, client, reply, smtp_messages
from tests.support.replies import ARGUMENT_ERROR, AUTH_OK, OK, SENDER_REFUSED

BAD_SYNTAX = (ARGUMENT_ERROR, "5.1.3 Bad recipient address syntax")
MALFORMED = (SENDER_REFUSED, "5.1.3 Error: malformed address")  # the SMTP parser's own refusal
NEEDS_UTF8 = (SENDER_REFUSED, "5.6.7 Non-ASCII address requires SMTPUTF8")


@pytest.mark.parametrize("rcpt,expected", [
    (b"b\x0bad@x.test", BAD_SYNTAX), (b"b\x7fad@x.test", BAD_SYNTAX), (b"b\x01ad@x.test", BAD_SYNTAX),
    (b"nobody", BAD_SYNTAX), (b"@x.test", MALFORMED), (b"a@", MALFORMED),
    ("josé@x.test".encode(), NEEDS_UTF8), (b"r@dest.org", (OK, "2.1.5 Recipient OK")),
])
async def test_recipients_are_checked_at_rcpt(gateway_factory, sink_factory, rcpt: bytes, expected):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    raw, _ = await RawSMTP.open(port_of(gw, "smtps"), tls=True)  # byte-exact: clients refuse these
    assert (await raw.cmd(b"EHLO client.test"))[0] == OK
    assert (await raw.cmd(b"AUTH PLAIN " + auth_plain_arg("apikey", p.key)))[0] == AUTH_OK
    assert (await raw.cmd(f"MAIL FROM:<{p.alias}>".encode()))[0] == OK
    assert await raw.cmd(b"RCPT TO:<" + rcpt + b">") == expected
    await raw.close()
    assert smtp_messages(gw) == []


async def test_a_non_ascii_recipient_is_taken_with_smtputf8(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert (await reply(smtp.execute_command(f"MAIL FROM:<{p.alias}> SMTPUTF8".encode())))[0] == OK
    assert await reply(smtp.execute_command("RCPT TO:<josé@x.test>".encode())) == (OK, "2.1.5 Recipient OK")
    smtp.close()
