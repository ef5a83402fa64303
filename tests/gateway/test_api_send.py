"""POST /api/v1/send over real HTTP against a running gateway, delivered to aiosmtpd sinks."""

from __future__ import annotations

import asyncio
import base64
import email
from email import policy

import aiosmtplib
import dkim

from relay.store import models as m
from tests.support.api import Api, send_body, start_api
from tests.conftest import port_of, provision, wait_for

OK, QUEUED, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, SUPPRESSED, TOO_MANY = 200, 202, 400, 401, 403, 422, 429


def validation(field: str, *messages: str) -> dict:
    return {"success": False, "error": "Validation failed", "details": {"fieldErrors": {field: list(messages)}}}


async def test_send_is_delivered_dkim_signed_as_multipart_alternative(api: Api):
    r = await api.client.post("/api/v1/send", json=send_body(api.p, cc=[{"email": "cc@dest.org"}],
                                                              bcc=[{"email": "hidden@dest.org"}],
                                                              reply_to={"email": "help@example.com"}))
    assert r.status_code == OK, r.text
    body = r.json()
    assert set(body) == {"success", "message_id", "provider", "timestamp"}
    assert body["success"] is True and body["provider"] == "smtp" and body["message_id"].startswith("msg_")
    assert body["timestamp"].endswith("Z") and len(body["timestamp"]) == len("2026-02-17T12:00:00.000Z")
    await wait_for(lambda: any(r.mail_from == api.p.alias for r in api.sink.received))
    got = next(r for r in api.sink.received if r.mail_from == api.p.alias)
    assert sorted(got.rcpt_tos) == ["cc@dest.org", "hidden@dest.org", "user@dest.org"]
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == f"App <{api.p.alias}>" and msg["Reply-To"] == "help@example.com"
    assert msg["Cc"] == "cc@dest.org" and msg["Bcc"] is None and b"hidden@dest.org" not in got.data
    assert msg["Message-ID"] == f"<{body['message_id']}@example.com>"  # on the From domain

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = api.p.records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None

    d = dkim.DKIM(got.data)
    algorithms = {d.verify_headerprep(i)[0][b"a"]: i for i in range(2)}
    assert set(algorithms) == {b"rsa-sha256", b"ed25519-sha256"}
    for idx in algorithms.values():
        assert dkim.DKIM(got.data).verify(idx=idx, dnsfunc=dnsfunc) is True


async def test_attachments_make_multipart_mixed(api: Api):
    pdf = b"%PDF-1.4 not really\x00\x01\x02" * 50
    r = await api.client.post("/api/v1/send", json=send_body(api.p, attachments=[
        {"filename": "invoice.pdf", "content": base64.b64encode(pdf).decode(), "content_type": "application/pdf"},
        {"filename": "logo.png", "content": base64.b64encode(b"\x89PNG").decode(), "content_type": "image/png",
         "content_id": "logo"}]))
    assert r.status_code == OK, r.text
    await wait_for(lambda: any(r.mail_from == api.p.alias for r in api.sink.received))
    got = next(r for r in api.sink.received if r.mail_from == api.p.alias)
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "multipart/alternative"
    assert parts[1].get_filename() == "invoice.pdf" and parts[1].get_content() == pdf
    assert parts[2]["Content-ID"] == "<logo>" and parts[2].get_content_disposition() == "inline"


async def test_text_only_and_html_only(api: Api):
    for fields, ctype in (({"text": "plain", "html": None}, "text/plain"), ({"html": "<b>x</b>", "text": None},
                                                                            "text/html")):
        body = send_body(api.p, subject=ctype, **fields)
        body = {k: v for k, v in body.items() if v is not None}
        r = await api.client.post("/api/v1/send", json=body)
        assert r.status_code == OK, r.text
    await wait_for(lambda: len([r for r in api.sink.received if r.mail_from == api.p.alias]) == 2)
    types = {email.message_from_bytes(r.data, policy=policy.default)["Subject"]:
             email.message_from_bytes(r.data, policy=policy.default).get_content_type()
             for r in api.sink.received if r.mail_from == api.p.alias}
    assert types == {"text/plain": "text/plain", "text/html": "text/html"}


BAD_INPUT = [
    ({"to": []}, validation("to", "Must have at least 1 recipient")),
    ({"to": None}, validation("to", "Input should be a valid list")),
    ({"to": [{"email": f"u{i}@dest.org"} for i in range(101)]},
     validation("to", "List should have at most 100 items after validation, not 101")),
    ({"cc": [{"email": f"u{i}@dest.org"} for i in range(51)]},
     validation("cc", "List should have at most 50 items after validation, not 51")),
    ({"bcc": [{"email": f"u{i}@dest.org"} for i in range(51)]},
     validation("bcc", "List should have at most 50 items after validation, not 51")),
    ({"subject": "x" * 999}, validation("subject", "String should have at most 998 characters")),
    ({"text": None, "html": None}, validation("html", "html or text is required")),
    ({"tags": [f"t{i}" for i in range(11)]},
     validation("tags", "List should have at most 10 items after validation, not 11")),
    ({"idempotency_key": "k" * 129}, validation("idempotency_key", "String should have at most 128 characters")),
    ({"to": [{"email": "not-an-address"}]}, validation("to", "0.email: invalid email address 'not-an-address'")),
    ({"subject": "Hi\r\nBcc: victim@dest.org"},
     validation("subject", "must not contain line breaks or NUL characters")),
    ({"from": {"email": "app@example.com", "name": "App\r\nBcc: victim@dest.org"}},
     validation("from", "name: must not contain line breaks or NUL characters")),
    ({"to": [{"email": "user@dest.org\r\nBcc: victim@dest.org"}]},
     validation("to", "0.email: must not contain line breaks or NUL characters")),
    ({"to": [{"email": "user@dest.org", "name": "U\nX-Evil: 1"}]},
     validation("to", "0.name: must not contain line breaks or NUL characters")),
    ({"reply_to": {"email": "a@b.org\nBcc: victim@dest.org"}},
     validation("reply_to", "email: must not contain line breaks or NUL characters")),
    ({"attachments": [{"filename": "a\r\n.txt", "content": "aGk="}]},
     validation("attachments", "0.filename: must not contain line breaks or NUL characters")),
    ({"attachments": [{"filename": "a.txt", "content": "not base64!"}]},
     validation("attachments", "0.content: not valid base64")),
    ({"alias_id": "ali_doesnotexist"}, validation("alias_id", "Unknown alias")),
    # every line separator Python's str.splitlines() knows, not just CR and LF
    *[({"subject": f"Hi{sep}Bcc: victim@dest.org"}, validation("subject", "must not contain line breaks or NUL characters"))
      for sep in ("\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029")],
    ({"from": {"email": "app@example.com", "name": "App\u2028Bcc: victim@dest.org"}},
     validation("from", "name: must not contain line breaks or NUL characters")),
]


async def test_bad_input_is_400_with_field_errors_and_nothing_is_stored(api: Api):
    for over, expected in BAD_INPUT:
        body = {k: v for k, v in send_body(api.p, **over).items() if v is not None}
        if "to" in over and over["to"] is None:
            body["to"] = None
        r = await api.client.post("/api/v1/send", json=body)
        assert (r.status_code, r.json()) == (BAD_REQUEST, expected), over
    r = await api.client.post("/api/v1/send", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (BAD_REQUEST, validation("body", "Invalid JSON"))
    assert api.submitted() == 0
    await asyncio.sleep(0.3)
    assert not [x for x in api.sink.received if x.mail_from == api.p.alias]


async def test_auth_and_sender_errors(api: Api):
    body = send_body(api.p)
    async with api.as_key(None) as anon:
        r = await anon.post("/api/v1/send", json=body)
    assert (r.status_code, r.json()) == (UNAUTHORIZED, {"success": False,
                                                         "error": "Missing API key: send Authorization: Bearer <key>"})
    async with api.as_key("rk_00000000_" + "A" * 43) as bad:
        r = await bad.post("/api/v1/send", json=body)
    assert (r.status_code, r.json()) == (UNAUTHORIZED, {"success": False, "error": "Invalid API key"})
    key, _ = api.gw.admin.create_key(api.p.account, ["aliases"])
    async with api.as_key(key) as aliases_only:
        r = await aliases_only.post("/api/v1/send", json=body)
    assert (r.status_code, r.json()) == (FORBIDDEN, {
        "success": False,
        "error": "This API key lacks the required scope (one of: sandbox, send, send:marketing, send:transactional)"})
    key, _ = api.gw.admin.create_key(api.p.account, ["send"])
    async with api.as_key(key) as send_only:
        r = await send_only.post("/api/v1/send", json=body, headers={"X-Relay-Sandbox": "true"})
    assert (r.status_code, r.json()) == (FORBIDDEN, {"success": False,
                                                      "error": "Sandbox sends need an API key with the sandbox scope"})
    r = await api.client.post("/api/v1/send", json=send_body(api.p, **{"from": {"email": "other@example.com"}}))
    assert (r.status_code, r.json()) == (FORBIDDEN, {"success": False,
                                                      "error": "Sender address not allowed for this login"})
    assert api.submitted() == 0


async def test_alias_id_picks_the_alias_and_its_pool(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        other = await sink_factory()
        provision(a.gw, other.port, alias="news@example.com", ip_pool="marketing", upstream="marketing-sink")
        alias = a.gw.store.directory.find_alias("news@example.com")
        r = await a.client.post("/api/v1/send", json=send_body(a.p, alias_id=alias.id))
        assert r.status_code == OK, r.text
        await wait_for(lambda: any(x.mail_from == "news@example.com" for x in other.received))
        got = next(x for x in other.received if x.mail_from == "news@example.com")
        assert f"From: App <{a.p.alias}>".encode() in got.data  # From stays; envelope and pool follow the alias
        assert not [x for x in a.sink.received if x.mail_from == "news@example.com"]


async def test_all_recipients_suppressed_is_422_and_nothing_stored(api: Api):
    r = await api.client.post("/api/v1/suppressions", json={"email": "gone@dest.org", "reason": "hard_bounce"})
    assert r.status_code == OK, r.text
    r = await api.client.post("/api/v1/send", json=send_body(api.p, to=[{"email": "Gone@dest.org"}]))
    assert (r.status_code, r.json()) == (SUPPRESSED, {"success": False, "suppressed": True,
                                                       "error": "Send suppressed — recipient unsubscribed or bounced"})
    assert api.submitted() == 0


async def test_some_recipients_suppressed_the_others_get_it(api: Api):
    await api.client.post("/api/v1/suppressions", json={"email": "gone@dest.org", "reason": "unsubscribe"})
    r = await api.client.post("/api/v1/send", json=send_body(api.p, to=[{"email": "gone@dest.org"},
                                                                        {"email": "here@dest.org"}]))
    assert r.status_code == OK, r.text
    assert r.json()["suppressed_recipients"] == ["gone@dest.org"]
    await wait_for(lambda: any(x.mail_from == api.p.alias for x in api.sink.received))
    assert [x.rcpt_tos for x in api.sink.received if x.mail_from == api.p.alias] == [["here@dest.org"]]
    r = await api.client.get(f"/api/v1/messages/{r.json()['message_id']}")
    states = {x["email"]: x["status"] for x in r.json()["message"]["recipients"]}
    assert states["gone@dest.org"] == "suppressed"


async def test_pool_down_is_202_queued_and_delivered_later(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        later = await sink_factory()
        a.gw.admin.add_alias("tx@example.com", account=a.p.account, ip_pool="transactional")
        a.gw.admin.verify_alias(email="tx@example.com")
        a.gw.pipeline.invalidate()
        r = await a.client.post("/api/v1/send", json=send_body(a.p, **{"from": {"email": "tx@example.com"}}))
        assert r.status_code == QUEUED, r.text
        body = r.json()
        assert {k: body[k] for k in ("success", "queued", "message")} == {
            "success": False, "queued": True, "message": "Email queued for retry"}
        assert body["message_id"].startswith("msg_")
        r = await a.client.post("/api/v1/smtp-pools", json={
            "name": "tx relay", "host": "127.0.0.1", "port": later.port, "encryption": "none",
            "ip_pool": "transactional"})
        assert r.status_code == OK, r.text
        await wait_for(lambda: any(x.mail_from == "tx@example.com" for x in later.received), timeout=15)


async def test_idempotency_replays_the_original_and_sends_once(api: Api):
    body = send_body(api.p, idempotency_key="welcome-usr_1")
    first = await api.client.post("/api/v1/send", json=body)
    second = await api.client.post("/api/v1/send", json=body)
    assert first.status_code == second.status_code == OK
    assert second.json() == {**first.json(), "idempotent": True}
    other = await api.client.post("/api/v1/send", json=send_body(api.p, idempotency_key="welcome-usr_2"))
    assert other.json()["message_id"] != first.json()["message_id"]
    await wait_for(lambda: len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 2)
    await asyncio.sleep(0.3)
    assert len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 2


async def test_a_sandbox_send_does_not_claim_the_real_sends_idempotency_key(api: Api):
    body = send_body(api.p, idempotency_key="order-42")
    test = await api.client.post("/api/v1/send", json=body, headers={"X-Relay-Sandbox": "true"})
    assert test.status_code == OK and test.json()["provider"] == "sandbox", test.text
    real = await api.client.post("/api/v1/send", json=body)
    assert real.status_code == OK and real.json()["provider"] == "smtp" and "idempotent" not in real.json()
    assert real.json()["message_id"] != test.json()["message_id"]
    await wait_for(lambda: len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 1)


async def test_idempotency_under_concurrency_sends_once(api: Api):
    body = send_body(api.p, idempotency_key="invoice-42")
    replies = await asyncio.gather(*(api.client.post("/api/v1/send", json=body) for _ in range(20)))
    assert {r.status_code for r in replies} == {OK}
    ids = {r.json()["message_id"] for r in replies}
    assert len(ids) == 1
    assert sum(1 for r in replies if r.json().get("idempotent")) == 19
    await wait_for(lambda: any(x.mail_from == api.p.alias for x in api.sink.received))
    await asyncio.sleep(0.5)
    assert len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 1
    assert api.submitted() == 1


async def test_idempotency_key_expires_after_24_hours(api: Api):
    import datetime as dt

    import sqlalchemy as sa

    body = send_body(api.p, idempotency_key="daily-report")
    first = (await api.client.post("/api/v1/send", json=body)).json()
    with api.gw.store.sessions.begin() as s:
        s.execute(sa.update(m.IdempotencyRecord).values(
            expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    again = (await api.client.post("/api/v1/send", json=body)).json()
    assert again["message_id"] != first["message_id"] and "idempotent" not in again


async def test_smtp_idempotency_key_header_sends_once(api: Api):
    async def submit() -> tuple[int, str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(api.gw, "submission"), start_tls=True,
                               validate_certs=False)
        await smtp.connect()
        await smtp.login("apikey", api.p.key)
        data = (f"From: {api.p.alias}\r\nTo: r@dest.org\r\nSubject: once\r\nIdempotency-Key: order-7\r\n\r\nbody\r\n")
        resp = await smtp.sendmail(api.p.alias, ["r@dest.org"], data.encode())
        await smtp.quit()
        return resp[1].split()[0], resp[1]

    first, second = await asyncio.gather(submit(), submit())
    third = await submit()
    queue_ids = {first[1].rsplit(" ", 1)[-1], second[1].rsplit(" ", 1)[-1], third[1].rsplit(" ", 1)[-1]}
    assert len(queue_ids) == 1, (first, second, third)
    await wait_for(lambda: any(x.mail_from == api.p.alias for x in api.sink.received))
    await asyncio.sleep(0.5)
    assert len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 1


async def test_sandbox_stores_and_delivers_nothing(api: Api):
    for header in ("X-Relay-Sandbox", "X-MisarMail-Sandbox"):
        r = await api.client.post("/api/v1/send", json=send_body(api.p, subject=header), headers={header: "true"})
        assert r.status_code == OK, r.text
        assert r.json()["provider"] == "sandbox" and r.json()["message_id"].startswith("sandbox_")
    key, _ = api.gw.admin.create_key(api.p.account, ["sandbox"])
    async with api.as_key(key) as sandbox_only:
        r = await sandbox_only.post("/api/v1/send", json=send_body(api.p, subject="sandbox-only key"))
    assert r.json()["provider"] == "sandbox"
    await asyncio.sleep(1.0)  # several poll intervals: nothing may go out
    assert not [x for x in api.sink.received if x.mail_from == api.p.alias]
    r = await api.client.get("/api/v1/sandbox")
    sends = r.json()["sends"]
    assert sorted(s["subject"] for s in sends) == ["X-MisarMail-Sandbox", "X-Relay-Sandbox", "sandbox-only key"]
    assert {rc["status"] for s in sends for rc in s["recipients"]} == {"sandbox"}
    assert (await api.client.get("/api/v1/messages")).json()["messages"] == []
    r = await api.client.delete("/api/v1/sandbox")
    assert r.json() == {"success": True, "deleted": 3}
    assert (await api.client.get("/api/v1/sandbox")).json()["sends"] == []


async def test_daily_quota_is_429_and_sandbox_does_not_count(gateway_factory, sink_factory):
    a = await start_api(gateway_factory, sink_factory, policies={
        "enabled": ["limits", "suppression", "quota"], "suppression": {"cache_ttl": 0},
        "quota": {"account_daily": 1, "cache_ttl": 0}})
    async with a.client:
        assert (await a.client.post("/api/v1/send", json=send_body(a.p))).status_code == OK
        r = await a.client.post("/api/v1/send", json=send_body(a.p))
        assert (r.status_code, r.json()) == (TOO_MANY, {"success": False, "error": "Too much mail, try again later"})
        r = await a.client.post("/api/v1/send", json=send_body(a.p), headers={"X-Relay-Sandbox": "true"})
        assert r.status_code == OK and r.json()["provider"] == "sandbox"
        usage = (await a.client.get("/api/v1/usage")).json()
        assert usage["enforced"] is True
        account = next(x for x in usage["limits"] if x["kind"] == "account")
        assert (account["daily"], account["used_today"], account["remaining_today"]) == (1, 1, 0)
        assert usage["sent_today"] == {"messages": 1, "recipients": 1, "sandbox_messages": 1, "sandbox_recipients": 1}


async def test_idempotency_across_two_gateways_on_one_store(gateway_factory, sink_factory, db_url):
    """Two nodes on one database: the claim in the store lets exactly one of them send."""
    url = db_url
    a = await start_api(gateway_factory, sink_factory, db_url=url)
    b_gw = await gateway_factory(db_url=url, policies={"enabled": ["suppression"], "suppression": {"cache_ttl": 0}},
                                 secrets={"master_key_file": str(a.gw.settings.master_key_path)})  # nodes share it
    async with a.client, a.as_key(a.p.key) as on_a:
        import httpx

        body = send_body(a.p, idempotency_key="cross-node")
        async with httpx.AsyncClient(base_url="http://" + b_gw.settings.api.listen,
                                     headers={"Authorization": f"Bearer {a.p.key}"}) as on_b:
            replies = await asyncio.gather(*[c.post("/api/v1/send", json=body) for c in (on_a, on_b) * 3])
        assert {r.status_code for r in replies} == {OK}, [r.text for r in replies]
        assert len({r.json()["message_id"] for r in replies}) == 1
        await wait_for(lambda: any(x.mail_from == a.p.alias for x in a.sink.received))
        await asyncio.sleep(0.5)
        assert len([x for x in a.sink.received if x.mail_from == a.p.alias]) == 1
