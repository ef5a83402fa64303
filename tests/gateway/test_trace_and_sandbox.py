"""What a relayed message carries and what a sandbox send is, over SMTP as over HTTP: a Received:
trace field (RFC 5321 4.4, ESMTPSA per RFC 3848), no Relay control header left, a Date with a
numeric zone and a Message-ID on the From domain; ``X-Relay-Sandbox: true`` (or a sandbox-only
key) stores the message without delivering it, through either door alike."""

from __future__ import annotations

import re

import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.store import models as m
from tests.conftest import port_of, wait_for
from tests.support.api import Api, send_body, start_api


def message(extra: str = "", *, date: bool = False) -> bytes:
    head = "From: App <app@example.com>\r\nTo: user@dest.org\r\nSubject: Hello\r\n" + extra
    if date:
        head += "Date: Thu, 03 Dec 2026 10:00:00 +0100\r\n"
    return (head + "\r\nHello there\r\n").encode()


async def smtp_send(gw, key: str, raw: bytes, rcpts: tuple[str, ...] = ("user@dest.org",)) -> tuple[int, str]:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "submission"), start_tls=True,
                           validate_certs=False, timeout=10, local_hostname="client.example")
    await smtp.connect()
    await smtp.login("apikey", key)
    try:
        errors, reply = await smtp.sendmail("app@example.com", list(rcpts), raw)
        return 250, reply
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        await smtp.quit()


def queue_id_of(reply: str) -> str:
    found = re.search(r"(?:sandbox_)?msg_[0-9a-f]+", reply)
    assert found, reply
    return found.group()


def stored(gw, queue_id: str) -> m.Message:
    with gw.store.sessions() as s:
        msg = s.get(m.Message, queue_id)
        assert msg is not None
        s.expunge(msg)
        return msg


def states(gw, queue_id: str) -> dict[str, str]:
    with gw.store.sessions() as s:
        return dict(s.execute(sa.select(m.Recipient.address, m.Recipient.state)
                              .where(m.Recipient.message_id == queue_id)).all())


@pytest.fixture
async def api(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        yield a


async def test_a_relayed_message_carries_its_trace_and_no_control_header(api: Api):
    code, reply = await smtp_send(api.gw, api.p.key, message("Idempotency-Key: k-1\r\nX-MisarMail-Sandbox: no\r\n"))
    assert code == 250, reply
    queue_id = queue_id_of(reply)
    await wait_for(lambda: any(r.mail_from == "app@example.com" for r in api.sink.received))
    (got,) = [r for r in api.sink.received if r.mail_from == "app@example.com"]
    head = got.data.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"\r\nReceived: from client\.example \(\[127\.0\.0\.1\]\)\r\n\tby relay\.test \(Relay\) "
                     rf"with ESMTPSA id {queue_id};\r\n\t\w{{3}}, \d\d \w{{3}} \d{{4}} [\d:]{{8}} \+0000\r\n", head), head
    assert head.startswith("DKIM-Signature:")  # signed after the trace field was added
    assert not re.search(r"(?im)^(idempotency-key|x-relay-sandbox|x-misarmail-sandbox|bcc):", head), head
    assert re.search(r"(?m)^Date: \w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000\r?$", head), head
    assert f"Message-ID: <{queue_id}@example.com>" in head


async def test_the_client_address_can_be_left_out(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory, smtp={"hide_client_address": True})
    async with a.client:
        code, reply = await smtp_send(a.gw, a.p.key, message(date=True))
        assert code == 250, reply
        await wait_for(lambda: any(r.mail_from == "app@example.com" for r in a.sink.received))
    (got,) = [r for r in a.sink.received if r.mail_from == "app@example.com"]
    head = got.data.split(b"\r\n\r\n", 1)[0].decode()
    assert f"\r\nReceived: by relay.test (Relay) with ESMTPSA id {queue_id_of(reply)};" in head
    assert "127.0.0.1" not in head and "client.example" not in head
    assert "Date: Thu, 03 Dec 2026 10:00:00 +0100" in head  # the client's own Date is kept


async def test_smtp_sandbox_by_header_and_by_sandbox_only_key(api: Api):
    code, reply = await smtp_send(api.gw, api.p.key, message("X-Relay-Sandbox: true\r\n"))
    assert code == 250, reply
    by_header = queue_id_of(reply)
    sandbox_key, _ = api.gw.admin.create_key(api.p.account, ["sandbox"])
    code, reply = await smtp_send(api.gw, sandbox_key, message())
    assert code == 250, reply
    by_key = queue_id_of(reply)
    for queue_id in (by_header, by_key):
        assert stored(api.gw, queue_id).sandbox is True
        assert states(api.gw, queue_id) == {"user@dest.org": "sandbox"}
        assert b"X-Relay-Sandbox" not in stored(api.gw, queue_id).body
    sends = (await api.client.get("/api/v1/sandbox")).json()["sends"]
    assert {s["message_id"] for s in sends} >= {by_header, by_key}
    assert not any(r.mail_from == "app@example.com" for r in api.sink.received)  # nothing delivered
    # a key without the sandbox scope cannot ask for it
    send_only, _ = api.gw.admin.create_key(api.p.account, ["send"])
    assert await smtp_send(api.gw, send_only, message("X-Relay-Sandbox: true\r\n")) == (
        550, "5.7.1 Sandbox sends need an API key with the sandbox scope")


async def test_the_same_sandbox_send_through_both_doors_is_stored_alike(api: Api):
    code, reply = await smtp_send(api.gw, api.p.key, message("X-Relay-Sandbox: true\r\n"))
    assert code == 250, reply
    via_smtp = stored(api.gw, queue_id_of(reply))
    r = await api.client.post("/api/v1/send", headers={"X-Relay-Sandbox": "true"},
                              json=send_body(api.p, subject="Hello", text="Hello there", html=None))
    assert r.status_code == 200, r.text
    via_http = stored(api.gw, r.json()["message_id"])
    same = ("account_id", "alias_id", "ip_pool", "mail_from", "subject", "sandbox")
    assert {f: getattr(via_smtp, f) for f in same} == {f: getattr(via_http, f) for f in same}
    assert (via_smtp.source, via_http.source) == ("smtp", "api")
    assert states(api.gw, via_smtp.id) == states(api.gw, via_http.id) == {"user@dest.org": "sandbox"}
    for body in (via_smtp.body, via_http.body):
        head = body.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nReceived: from " in head and b"X-Relay-Sandbox" not in head


async def test_one_idempotency_key_is_one_message_whichever_door(api: Api):
    code, reply = await smtp_send(api.gw, api.p.key, message("X-Relay-Sandbox: true\r\nIdempotency-Key: twin\r\n"))
    assert code == 250, reply
    first = queue_id_of(reply)
    code, again = await smtp_send(api.gw, api.p.key, message("X-Relay-Sandbox: true\r\nIdempotency-Key: twin\r\n"))
    assert (code, queue_id_of(again)) == (250, first)
    r = await api.client.post("/api/v1/send", headers={"X-Relay-Sandbox": "true"},
                              json=send_body(api.p, idempotency_key="twin"))
    assert (r.status_code, r.json()["message_id"]) == (200, first), r.text
    with api.gw.store.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Message).where(m.Message.sandbox.is_(True))) == 1
