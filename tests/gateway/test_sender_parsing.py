"""Who sends is decided by one strict parse of the header block: a second From hidden from one
parser, or a line that is not a field, is refused with 5xx; nothing is stored or relayed."""

from __future__ import annotations

import pytest

from tests.conftest import provision
from tests.gateway.test_submission import client, reply, smtp_messages
from tests.support.replies import OK, REFUSED

MALFORMED = (REFUSED, "5.6.0 Malformed message header")
SPOOFS = [
    b"From : ceo@other.test\r\nFrom: App <app@example.com>\r\nTo: r@dest.org\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From: App <app@example.com>\r\nFrom\t: ceo@other.test\r\nTo: r@dest.org\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From\t: App <app@example.com>\r\nTo: r@dest.org\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From: App <app@example.com>\r\nTo: r@dest.org\r\nnot a field\r\nSubject: hi\r\n\r\nbody\r\n",
]


@pytest.mark.parametrize("data", SPOOFS, ids=["space-before-colon", "tab-before-colon", "only-tab-from", "no-colon"])
async def test_a_header_block_parsers_read_differently_is_refused(gateway_factory, sink_factory, data: bytes):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert (await reply(smtp.mail(p.alias)))[0] == OK
    assert (await reply(smtp.rcpt("r@dest.org")))[0] == OK
    assert await reply(smtp.data(data)) == MALFORMED
    smtp.close()
    assert smtp_messages(gw) == []
    assert not [r for r in sink.received if r.mail_from == p.alias]
