import aiosmtplib

from tests.conftest import port_of, provision, wait_for


async def test_submission_end_to_end(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    msg = b"From: App <app@example.com>\r\nTo: r@dest.org\r\nSubject: hi\r\n\r\nhello\r\n"
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "submission"), start_tls=True, validate_certs=False)
    await smtp.connect()
    await smtp.login("apikey", p.key)
    errors, reply = await smtp.sendmail("app@example.com", ["r@dest.org"], msg)
    await smtp.quit()
    assert reply.startswith("2.0.0 OK queued as msg_")
    await wait_for(lambda: len([r for r in sink.received if r.rcpt_tos == ["r@dest.org"]]) == 1)
