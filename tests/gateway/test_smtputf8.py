"""Non-ASCII addresses (RFC 6531): taken at RCPT only with SMTPUTF8, delivered with SMTPUTF8 to an
upstream that offers it; through one that does not, that recipient alone bounces (553 5.6.7) and
the others of the message are delivered."""

from __future__ import annotations

import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.store import models as m
from tests.conftest import port_of, provision, wait_for

BODY = b"From: app@example.com\r\nTo: undisclosed-recipients:;\r\nSubject: hi\r\n\r\nhello\r\n"


async def submit(gw, key: str, recipients: list[str]) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "submission"), start_tls=True,
                           validate_certs=False, timeout=10)
    await smtp.connect()
    await smtp.login("apikey", key)
    await smtp.sendmail("app@example.com", recipients, BODY, mail_options=["SMTPUTF8"])
    await smtp.quit()


def states(gw) -> dict[str, tuple[str, str | None]]:
    with gw.store.sessions() as s:
        rows = s.execute(sa.select(m.Recipient.address, m.Recipient.state, m.Recipient.last_reply)
                         .join(m.Message).where(m.Message.source == "smtp")).all()
    return {a: (st, reply) for a, st, reply in rows}


@pytest.mark.parametrize("offers", [True, False])
async def test_a_non_ascii_recipient_needs_an_smtputf8_upstream(gateway_factory, sink_factory, offers: bool):
    sink = await sink_factory(smtputf8=offers)
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    await submit(gw, p.key, ["plain@dest.org", "josé@dest.org"])
    await wait_for(lambda: all(st in ("delivered", "bounced") for st, _ in states(gw).values()) and len(states(gw)) == 2)
    got = states(gw)
    assert got["plain@dest.org"][0] == "delivered"
    if offers:
        assert got["josé@dest.org"][0] == "delivered"
        assert [r.rcpt_tos for r in sink.received if r.mail_from == "app@example.com"] == [
            ["plain@dest.org", "josé@dest.org"]]
    else:
        assert got["josé@dest.org"] == (
            "bounced", "5.6.7 The upstream does not offer SMTPUTF8: a non-ASCII address cannot go through it")
        assert [r.rcpt_tos for r in sink.received if r.mail_from == "app@example.com"] == [["plain@dest.org"]]
        await wait_for(lambda: any(r.mail_from == "<>" for r in sink.received))  # the DSN to the sender
        (dsn,) = [r for r in sink.received if r.mail_from == "<>"]
        assert dsn.rcpt_tos == ["app@example.com"] and b"Final-Recipient: utf-8; jos\\x{E9}@dest.org" in dsn.data
