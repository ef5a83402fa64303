"""The core gateway, end to end: real SMTP over loopback against a running Gateway, with aiosmtpd
sinks as upstreams. Every test asserts the exact reply (with its enhanced status code), what the
store holds afterwards and what the sinks received."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import email.utils
import re
import ssl
from email.parser import BytesHeaderParser
from email.policy import compat32
from types import SimpleNamespace
from typing import Awaitable

import aiosmtplib
import dkim
import httpx
import pytest
from aiosmtplib import SMTPResponseException

from relay.secrets import parse_api_key
from tests.conftest import free_port, port_of, provision, wait_for
from tests.unit.submission.test_dkim import verify_ed25519
from tests.support.replies import (
    AUTH_INVALID,
    AUTH_OK,
    AUTH_REQUIRED,
    BAD_SEQUENCE,
    CLOSING,
    INSUFFICIENT,
    OK,
    READY,
    REFUSED,
    SENDER_REFUSED,
    START_DATA,
    TRANSACTION_FAILED,
    UNAVAILABLE,
)

QUEUED = re.compile(r"^2\.0\.0 OK queued as (msg_[0-9a-f]{16})$")
ESC = re.compile(r"^([245])\.\d{1,3}\.\d{1,3} ")
SYSTEM_SENDER = "postmaster@relay.test"


# -- helpers ----------------------------------------------------------------------------------------
def message(from_: str = "App <app@example.com>", to: str = "r@dest.org", subject: str = "hi",
            extra: bytes = b"", body: bytes = b"hello\r\n") -> bytes:
    return (f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\n".encode() + extra + b"\r\n" + body)


def headers(data: bytes):
    return BytesHeaderParser(policy=compat32).parsebytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")


async def client(gw, listener: str = "submission", *, starttls: bool = True) -> aiosmtplib.SMTP:
    port = port_of(gw, listener)
    if listener == "smtps":
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, validate_certs=False)
    elif listener == "submission":
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=starttls, validate_certs=False)
    else:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    if listener == "smtps" or (listener == "submission" and starttls):
        await smtp.ehlo()  # aiosmtplib does not say EHLO again after the TLS handshake
    return smtp


async def reply(aw: Awaitable) -> tuple[int, str]:
    """(code, message) of one command, whether aiosmtplib raises on it or not."""
    try:
        resp = await aw
    except SMTPResponseException as exc:
        return exc.code, exc.message
    return resp.code, resp.message


async def transaction(smtp: aiosmtplib.SMTP, sender: str, rcpts: list[str], data: bytes) -> tuple[str, int, str]:
    """MAIL, RCPT..., DATA step by step: (stage that answered last, code, message)."""
    code, msg = await reply(smtp.mail(sender))
    if code != 250:
        return "MAIL", code, msg
    for r in rcpts:
        code, msg = await reply(smtp.rcpt(r))
        if code != 250:
            return "RCPT", code, msg
    code, msg = await reply(smtp.data(data))
    return "DATA", code, msg


def smtp_messages(gw) -> list:
    """Messages submitted over SMTP (system mail such as alias verification is left out)."""
    return [m for m in gw.store.queue.list_messages(limit=10_000) if m.source == "smtp"]


def received_from(sink, sender: str) -> list:
    return [r for r in sink.received if r.mail_from == sender]


def assert_nothing_stored_or_sent(gw, sink, sender: str) -> None:
    assert [m for m in smtp_messages(gw) if m.mail_from == sender] == []
    assert received_from(sink, sender) == []


async def barrier(gw, sink, p) -> None:
    """Send one good message and wait for it: anything queued before it had its chance to go out."""
    smtp = await client(gw, "smtps")
    await smtp.login("apikey", p.key)
    stage, code, msg = await transaction(smtp, p.alias, ["barrier@dest.org"], message(from_=p.alias))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250), msg
    await wait_for(lambda: any(r.rcpt_tos == ["barrier@dest.org"] for r in sink.received))


@pytest.fixture
async def env(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    return SimpleNamespace(gw=gw, sink=sink, p=p)


class RawSMTP:
    """A byte-exact SMTP client (aiosmtplib normalizes line endings, which some tests must not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, tls: bool) -> tuple["RawSMTP", tuple[int, str]]:
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        raw = cls(reader, writer)
        return raw, await raw.read_reply()

    async def read_reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            assert line.endswith(b"\r\n"), line
            lines.append(line[4:-2].decode())
            if line[3:4] == b" ":
                return int(line[:3]), "\n".join(lines)

    async def cmd(self, line: bytes) -> tuple[int, str]:
        self.writer.write(line + b"\r\n")
        return await self.read_reply()

    async def data(self, payload: bytes) -> tuple[int, str]:
        """``payload`` (ending in CRLF) is sent exactly as given, then the final dot."""
        assert payload.endswith(b"\r\n")
        code, text = await self.cmd(b"DATA")
        assert code == START_DATA, text
        self.writer.write(payload + b".\r\n")
        return await self.read_reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def corrupt(key: str) -> str:
    """The same key id with a wrong secret."""
    return key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")


def auth_plain_arg(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


# -- 1. happy paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("listener,mechanism,username", [
    ("submission", "PLAIN", "apikey"),
    ("submission", "LOGIN", "acct"),
    ("smtps", "PLAIN", "acct"),
    ("smtps", "LOGIN", "apikey"),
])
async def test_authenticated_submission_is_queued_and_delivered(env, listener, mechanism, username):
    gw, sink, p = env.gw, env.sink, env.p
    user = p.account if username == "acct" else "apikey"
    smtp = await client(gw, listener)
    assert smtp.get_transport_info("ssl_object") is not None  # STARTTLS done / implicit TLS
    auth = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    assert await reply(auth(user, p.key)) == (AUTH_OK, "2.7.0 Authentication successful")
    body = b"line one\r\n.starts with a dot\r\n.\r\nlast\r\n"
    data = message(extra=b"Bcc: Hidden <hidden@dest.org>,\r\n\tother-hidden@dest.org\r\n", body=body)
    assert await reply(smtp.mail(p.alias)) == (OK, "2.1.0 Sender OK")
    assert await reply(smtp.rcpt("r@dest.org")) == (OK, "2.1.5 Recipient OK")
    assert await reply(smtp.rcpt("hidden@dest.org")) == (OK, "2.1.5 Recipient OK")
    code, text = await reply(smtp.data(data))
    assert code == OK and QUEUED.match(text), text
    qid = QUEUED.match(text).group(1)
    assert await reply(smtp.quit()) == (CLOSING, "2.0.0 Bye")

    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    got = received_from(sink, p.alias)[0]
    assert got.rcpt_tos == ["r@dest.org", "hidden@dest.org"]
    # exactly what was committed goes out (dot-stuffing undone on both hops)
    assert got.data == gw.store.queue.body(qid)
    h = headers(got.data)
    assert h.get_all("Message-ID") == [f"<{qid}@example.com>"]  # on the From domain
    assert len(h.get_all("Date")) == 1 and email.utils.parsedate_to_datetime(h["Date"]) is not None
    assert h.get_all("Bcc") is None
    assert b"hidden@dest.org" not in got.data.lower()
    assert len(h.get_all("DKIM-Signature")) == 2
    assert got.data.endswith(b"\r\n\r\n" + body)

    await wait_for(lambda: gw.store.queue.show(qid).state == "delivered")
    view = gw.store.queue.show(qid)
    assert (view.mail_from, view.ip_pool, view.source, view.subject) == (p.alias, "default", "smtp", "hi")
    assert view.header_message_id == f"<{qid}@example.com>"
    assert [(r.address, r.state, r.attempts, r.upstream, r.last_code) for r in view.recipients] == [
        ("r@dest.org", "delivered", 1, "sink", 250), ("hidden@dest.org", "delivered", 1, "sink", 250)]
    assert sorted((e.type, e.recipient) for e in view.events) == [
        ("accepted", "hidden@dest.org"), ("accepted", "r@dest.org"),
        ("delivered", "hidden@dest.org"), ("delivered", "r@dest.org")]


async def test_existing_message_id_and_date_are_kept(env):
    gw, sink, p = env.gw, env.sink, env.p
    extra = b"Message-ID: <own.id@app.example.com>\r\nDate: Mon, 04 May 2026 10:00:00 +0200\r\n"
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message(extra=extra))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text)
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    h = headers(received_from(sink, p.alias)[0].data)
    assert h.get_all("Message-ID") == ["<own.id@app.example.com>"]
    assert h.get_all("Date") == ["Mon, 04 May 2026 10:00:00 +0200"]
    assert gw.store.queue.show(QUEUED.match(text).group(1)).header_message_id == "<own.id@app.example.com>"


async def test_8bit_subject_and_message_id_are_queued_as_text(env):
    """An SMTPUTF8/8BITMIME message: the stored subject is the UTF-8 text, not a tempfail."""
    gw, sink, p = env.gw, env.sink, env.p
    extra = "Message-ID: <idé@app.example.com>\r\n".encode()
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"],
                                          message(subject="Grüße, héllo", extra=extra))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text)
    view = gw.store.queue.show(QUEUED.match(text).group(1))
    assert (view.subject, view.header_message_id) == ("Grüße, héllo", "<idé@app.example.com>")
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)


async def test_each_alias_goes_out_through_its_own_pool(gateway_factory, sink_factory):
    sink_a, sink_b = await sink_factory(), await sink_factory()
    gw = await gateway_factory()
    pa = provision(gw, sink_a.port, alias="a@example.com", ip_pool="transactional", upstream="up-a")
    pb = provision(gw, sink_b.port, alias="b@example.com", ip_pool="marketing", upstream="up-b")
    qids = {}
    for p, n in ((pa, 2), (pb, 2)):
        smtp = await client(gw, "smtps")
        await smtp.login("apikey", p.key)
        for i in range(n):
            stage, code, text = await transaction(smtp, p.alias, [f"r{i}@dest.org"],
                                                  message(from_=p.alias, subject=f"{p.alias} {i}"))
            assert (stage, code) == ("DATA", 250) and QUEUED.match(text), text
            qids[QUEUED.match(text).group(1)] = p.alias
        await smtp.quit()
    await wait_for(lambda: len(received_from(sink_a, "a@example.com")) == 2
                   and len(received_from(sink_b, "b@example.com")) == 2)
    await barrier(gw, sink_a, pa)
    assert received_from(sink_a, "b@example.com") == [] and received_from(sink_b, "a@example.com") == []
    for qid, alias in qids.items():
        view = gw.store.queue.show(qid)
        assert view.ip_pool == {"a@example.com": "transactional", "b@example.com": "marketing"}[alias]
        await wait_for(lambda qid=qid: gw.store.queue.show(qid).state == "delivered")
        assert {r.upstream for r in gw.store.queue.show(qid).recipients} == {
            {"a@example.com": "up-a", "b@example.com": "up-b"}[alias]}


# -- 2. DKIM --------------------------------------------------------------------------------------------
async def test_delivered_message_carries_valid_rsa_and_ed25519_signatures(env):
    gw, sink, p = env.gw, env.sink, env.p
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    data = message(extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n",
                   body="Grüße,  with  spaces \t\r\n\r\n".encode())
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], data)
    await smtp.quit()
    assert (stage, code) == ("DATA", 250), text
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    signed = received_from(sink, p.alias)[0].data

    lookups = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        key = name.decode().rstrip(".")
        lookups.append(key)
        value = p.records.get(key)
        return value.encode() if value is not None else None

    sigs = {}
    for idx in range(2):
        tags = dkim.DKIM(signed).verify_headerprep(idx)[0]
        sigs[tags[b"a"]] = (idx, tags)
    assert set(sigs) == {b"rsa-sha256", b"ed25519-sha256"}
    month = next(k for k in p.records if k.startswith("relay-rsa-"))[len("relay-rsa-"):].split(".")[0]
    for algorithm, prefix in ((b"rsa-sha256", "relay-rsa-"), (b"ed25519-sha256", "relay-ed-")):
        tags = sigs[algorithm][1]
        assert tags[b"d"] == b"example.com" and tags[b"s"] == f"{prefix}{month}".encode()
        assert tags[b"c"] == b"relaxed/relaxed"
        assert f"{prefix}{month}._domainkey.example.com" in p.records

    assert dkim.DKIM(signed).verify(idx=sigs[b"rsa-sha256"][0], dnsfunc=dnsfunc) is True
    assert verify_ed25519(signed, sigs[b"ed25519-sha256"][0], dnsfunc) is True
    assert f"relay-rsa-{month}._domainkey.example.com" in lookups
    assert f"relay-ed-{month}._domainkey.example.com" in lookups

    tampered = signed.replace(b"with  spaces", b"with spices")
    try:
        rsa_ok = dkim.DKIM(tampered).verify(idx=sigs[b"rsa-sha256"][0], dnsfunc=dnsfunc)
    except dkim.ValidationError:
        rsa_ok = False
    assert rsa_ok is False
    assert verify_ed25519(tampered, sigs[b"ed25519-sha256"][0], dnsfunc) is False


# -- 3. refusals ----------------------------------------------------------------------------------------
async def test_starttls_is_required_before_auth_and_mail_on_submission(env):
    gw, sink, p = env.gw, env.sink, env.p
    smtp = await client(gw, starttls=False)
    code, _ = await reply(smtp.ehlo())
    assert code == OK
    assert smtp.supports_extension("starttls") and smtp.supports_extension("enhancedstatuscodes")
    assert not smtp.supports_extension("auth")
    assert await reply(smtp.execute_command(b"AUTH", b"PLAIN", auth_plain_arg("apikey", p.key))) == (
        530, "5.7.0 Must issue a STARTTLS command first")
    assert await reply(smtp.execute_command(b"MAIL", f"FROM:<{p.alias}>".encode())) == (
        530, "5.7.0 Must issue a STARTTLS command first")
    assert await reply(smtp.execute_command(b"RCPT", b"TO:<r@dest.org>")) == (
        530, "5.7.0 Must issue a STARTTLS command first")
    await smtp.starttls()
    await smtp.ehlo()
    assert smtp.supports_extension("auth")
    assert sorted(smtp.esmtp_extensions["auth"].lower().split()) == ["login", "plain"]
    await smtp.quit()
    assert_nothing_stored_or_sent(gw, sink, p.alias)


async def test_bad_credentials_are_refused(env):
    gw, sink, p = env.gw, env.sink, env.p
    other = provision(gw, sink.port, account="globex", domain="example.org", alias="app@example.org")
    wrong_secret = corrupt(p.key)
    cases = {
        "wrong secret": ("apikey", wrong_secret),
        "malformed key": ("apikey", "not-a-key"),
        "other account's key under this account's name": (p.account, other.key),
        "right key under another account's name": ("globex", p.key),
    }
    for case, (user, key) in cases.items():
        smtp = await client(gw)
        assert await reply(smtp.auth_plain(user, key)) == (AUTH_INVALID, "5.7.8 Authentication credentials invalid"), case
        assert await reply(smtp.auth_login(user, key)) == (AUTH_INVALID, "5.7.8 Authentication credentials invalid"), case
        assert await reply(smtp.mail(p.alias)) == (AUTH_REQUIRED, "5.7.0 Authentication required"), case
        await smtp.quit()
    # each key works under its own account's name (or "apikey") ...
    smtp = await client(gw)
    assert await reply(smtp.auth_plain("globex", other.key)) == (AUTH_OK, "2.7.0 Authentication successful")
    await smtp.quit()
    smtp = await client(gw)
    assert await reply(smtp.auth_plain("apikey", p.key)) == (AUTH_OK, "2.7.0 Authentication successful")
    await smtp.quit()
    # ... until it is revoked
    gw.store.directory.revoke_api_key(parse_api_key(p.key))
    gw.pipeline.invalidate()
    smtp = await client(gw)
    assert await reply(smtp.auth_plain("apikey", p.key)) == (AUTH_INVALID, "5.7.8 Authentication credentials invalid")
    assert await reply(smtp.mail(p.alias)) == (AUTH_REQUIRED, "5.7.0 Authentication required")
    await smtp.quit()
    assert_nothing_stored_or_sent(gw, sink, p.alias)
    assert smtp_messages(gw) == []


async def test_mail_before_auth_is_refused(env):
    gw, sink, p = env.gw, env.sink, env.p
    for listener in ("submission", "smtps"):
        smtp = await client(gw, listener)
        assert await reply(smtp.mail(p.alias)) == (AUTH_REQUIRED, "5.7.0 Authentication required")
        assert await reply(smtp.execute_command(b"DATA")) == (AUTH_REQUIRED, "5.7.0 Authentication required")
        await smtp.quit()
    assert_nothing_stored_or_sent(gw, sink, p.alias)


async def test_unverified_alias_is_refused_at_mail(env):
    gw, sink, p = env.gw, env.sink, env.p
    alias, _ = gw.admin.add_alias("unverified@example.com", account=p.account)
    assert alias.verified is False
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert await reply(smtp.mail("unverified@example.com")) == (
        553, "5.7.1 Sender address not allowed for this login")
    assert await reply(smtp.rcpt("r@dest.org")) == (BAD_SEQUENCE, "5.5.1 Error: need MAIL command")
    await smtp.quit()
    await barrier(gw, sink, p)
    assert_nothing_stored_or_sent(gw, sink, "unverified@example.com")


async def test_alias_of_another_account_is_refused_at_mail(env):
    gw, sink, p = env.gw, env.sink, env.p
    other = provision(gw, sink.port, account="globex", domain="example.org", alias="boss@example.org")
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    for sender in (other.alias, "BOSS@Example.org", "nobody@example.com", ""):
        assert await reply(smtp.mail(sender)) == (SENDER_REFUSED, "5.7.1 Sender address not allowed for this login")
    await smtp.quit()
    await barrier(gw, sink, p)
    assert_nothing_stored_or_sent(gw, sink, other.alias)
    assert [m.mail_from for m in smtp_messages(gw)] == [p.alias]


async def test_from_header_must_be_an_alias_of_the_account(env):
    gw, sink, p = env.gw, env.sink, env.p
    provision(gw, sink.port, account="globex", domain="example.org", alias="boss@example.org")
    cases = {
        "not an alias at all": message(from_="Stranger <stranger@example.com>"),
        "a verified alias of another account": message(from_="Boss <boss@example.org>"),
        "two authors": message(from_="App <app@example.com>, Other <other@example.com>"),
        "no From at all": b"To: r@dest.org\r\nSubject: x\r\n\r\nhi\r\n",
    }
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    for case, data in cases.items():
        assert await transaction(smtp, p.alias, ["r@dest.org"], data) == (
            "DATA", 550, "5.7.1 From header not allowed for this login"), case
    await smtp.quit()
    await barrier(gw, sink, p)
    assert [m.subject for m in smtp_messages(gw)] == ["hi"]  # the barrier only
    assert [r.rcpt_tos for r in received_from(sink, p.alias)] == [["barrier@dest.org"]]


async def test_from_header_may_be_another_verified_alias_of_the_account(env):
    gw, sink, p = env.gw, env.sink, env.p
    provision(gw, sink.port, alias="news@example.com")
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message(from_="News <news@example.com>"))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text)
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)


async def test_key_scope_limits_the_pools_it_may_send_through(gateway_factory, sink_factory):
    sink_t, sink_m = await sink_factory(), await sink_factory()
    gw = await gateway_factory()
    provision(gw, sink_t.port, alias="tx@example.com", ip_pool="transactional", upstream="up-t")
    pm = provision(gw, sink_m.port, alias="promo@example.com", ip_pool="marketing", upstream="up-m",
                   scopes=("send:marketing",))
    smtp = await client(gw)
    await smtp.login("apikey", pm.key)
    assert await reply(smtp.mail("tx@example.com")) == (
        550, "5.7.1 This key may not send through that sender's pool")
    stage, code, text = await transaction(smtp, "promo@example.com", ["r@dest.org"],
                                          message(from_="promo@example.com"))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text)
    await wait_for(lambda: len(received_from(sink_m, "promo@example.com")) == 1)
    assert [(m.mail_from, m.ip_pool) for m in smtp_messages(gw)] == [("promo@example.com", "marketing")]
    assert received_from(sink_t, "tx@example.com") == []


BARE_LINE_ENDINGS = {
    "bare LF": b"From: app@example.com\r\nTo: r@dest.org\r\nSubject: x\r\n\r\nbare\nLF\r\n",
    "SMTP smuggling": b"From: app@example.com\r\nTo: r@dest.org\r\nSubject: x\r\n\r\nsmuggle\n.\r\n"
                      b"MAIL FROM:<app@example.com>\r\n",
    "bare CR": b"From: app@example.com\r\nTo: r@dest.org\r\nSubject: x\r\n\r\nbare\rCR\r\n",
    "bare LF in the header": b"From: app@example.com\nTo: r@dest.org\r\nSubject: x\r\n\r\nbody\r\n",
}


async def test_bare_line_endings_in_data_are_refused(env):
    gw, sink, p = env.gw, env.sink, env.p
    raw, greeting = await RawSMTP.open(port_of(gw, "smtps"), tls=True)
    assert greeting[0] == 220
    assert (await raw.cmd(b"EHLO client.test"))[0] == OK
    assert await raw.cmd(b"AUTH PLAIN " + auth_plain_arg("apikey", p.key)) == (AUTH_OK, "2.7.0 Authentication successful")
    for case, payload in BARE_LINE_ENDINGS.items():
        assert await raw.cmd(b"MAIL FROM:<app@example.com>") == (OK, "2.1.0 Sender OK"), case
        assert await raw.cmd(b"RCPT TO:<r@dest.org>") == (OK, "2.1.5 Recipient OK"), case
        assert await raw.data(payload) == (REFUSED, "5.6.11 Bare CR or LF in message data refused"), case
    # the session goes on: a clean message right after is accepted
    assert await raw.cmd(b"MAIL FROM:<app@example.com>") == (OK, "2.1.0 Sender OK")
    assert await raw.cmd(b"RCPT TO:<clean@dest.org>") == (OK, "2.1.5 Recipient OK")
    code, text = await raw.data(b"From: app@example.com\r\nSubject: clean\r\n\r\nclean\r\n")
    assert code == OK and QUEUED.match(text), text
    assert await raw.cmd(b"QUIT") == (CLOSING, "2.0.0 Bye")
    await raw.close()
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    assert [m.subject for m in smtp_messages(gw)] == ["clean"]
    assert received_from(sink, p.alias)[0].rcpt_tos == ["clean@dest.org"]


def relay_overrides(network: str) -> dict:
    return {"smtp": {"relay": f"127.0.0.1:{free_port()}", "trusted": [{"network": network, "account": "acme"}]}}


async def test_relay_listener_refuses_untrusted_clients(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(**relay_overrides("10.0.0.0/8"))
    p = provision(gw, sink.port)
    smtp = await client(gw, "relay")
    await smtp.ehlo()
    assert not smtp.supports_extension("auth") and not smtp.supports_extension("starttls")
    assert smtp.supports_extension("enhancedstatuscodes")
    assert await reply(smtp.mail(p.alias)) == (TRANSACTION_FAILED, "5.7.1 Relay access denied")
    assert await reply(smtp.execute_command(b"AUTH", b"PLAIN", auth_plain_arg("apikey", p.key))) == (
        538, "5.7.11 Encryption required for requested authentication mechanism")
    assert await reply(smtp.mail(p.alias)) == (TRANSACTION_FAILED, "5.7.1 Relay access denied")
    await smtp.quit()
    assert_nothing_stored_or_sent(gw, sink, p.alias)


async def test_relay_listener_accepts_trusted_clients_without_auth(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(**relay_overrides("127.0.0.0/8"))
    p = provision(gw, sink.port)
    gw.admin.add_alias("pending@example.com", account="acme")
    smtp = await client(gw, "relay")
    await smtp.ehlo()
    assert not smtp.supports_extension("auth")
    # trusted, but still only as a verified alias of the network's account
    assert await reply(smtp.mail("pending@example.com")) == (SENDER_REFUSED, "5.7.1 Sender address not allowed for this login")
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message())
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text), text
    await smtp.quit()
    qid = QUEUED.match(text).group(1)
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    assert received_from(sink, p.alias)[0].rcpt_tos == ["r@dest.org"]
    view = gw.store.queue.show(qid)
    assert view.account_id == gw.store.directory.get_account("acme").id and view.source == "smtp"
    assert len(headers(received_from(sink, p.alias)[0].data).get_all("DKIM-Signature")) == 2


def break_enqueue(gw, monkeypatch, writes: list) -> None:
    """Make the store refuse new messages (other writes, e.g. delivery outcomes, still work).

    The group-commit object captured the store's bound method when it was built, so the patch goes
    on that object: ``pipeline.writer._apply`` (StoreWriter) or ``pipeline._enqueue._write`` (Batcher)."""
    writer = getattr(gw.pipeline, "writer", None)
    if writer is not None:
        real = writer._apply

        def broken_apply(**ops):
            if ops.get("enqueue"):
                writes.append(len(ops["enqueue"]))
                raise OSError("disk I/O error")
            return real(**ops)

        monkeypatch.setattr(writer, "_apply", broken_apply)
    else:
        def broken_write(batch):
            writes.append(len(batch))
            raise OSError("disk I/O error")

        monkeypatch.setattr(gw.pipeline._enqueue, "_write", broken_write)


async def test_store_failure_at_data_is_a_tempfail_never_a_250(env, monkeypatch):
    gw, sink, p = env.gw, env.sink, env.p
    writes = []

    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    break_enqueue(gw, monkeypatch, writes)
    assert await transaction(smtp, p.alias, ["r@dest.org"], message(subject="lost")) == (
        "DATA", 451, "4.3.0 Temporary local problem, try again later")
    assert writes  # the store was asked, and refused
    assert [m.subject for m in smtp_messages(gw)] == []
    monkeypatch.undo()
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message(subject="kept"))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text), text
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1)
    await barrier(gw, sink, p)
    assert sorted(m.subject for m in smtp_messages(gw)) == ["hi", "kept"]
    assert [headers(r.data)["Subject"] for r in received_from(sink, p.alias)] == ["kept", "hi"]


async def test_every_reply_after_ehlo_carries_an_enhanced_status_code(env):
    gw, p = env.gw, env.p
    smtp = await client(gw, starttls=False)
    await smtp.ehlo()
    seen: list[tuple[str, int, str]] = []

    async def run(label: str, aw: Awaitable) -> tuple[int, str]:
        code, text = await reply(aw)
        seen.append((label, code, text))
        return code, text

    assert await run("STARTTLS", smtp.starttls()) == (READY, "2.0.0 Ready to start TLS")
    await smtp.ehlo()
    assert await run("NOOP", smtp.execute_command(b"NOOP")) == (OK, "2.0.0 OK")
    assert await run("AUTH", smtp.auth_plain("apikey", p.key)) == (AUTH_OK, "2.7.0 Authentication successful")
    await run("AUTH again", smtp.execute_command(b"AUTH", b"PLAIN", auth_plain_arg("apikey", p.key)))
    await run("RCPT before MAIL", smtp.execute_command(b"RCPT", b"TO:<r@dest.org>"))
    await run("bad MAIL syntax", smtp.execute_command(b"MAIL", b"TO:<r@dest.org>"))
    await run("unknown command", smtp.execute_command(b"FROB"))
    await run("VRFY", smtp.execute_command(b"VRFY", b"someone"))
    await run("HELP", smtp.execute_command(b"HELP"))
    assert await run("MAIL", smtp.execute_command(b"MAIL", f"FROM:<{p.alias}>".encode())) == (OK, "2.1.0 Sender OK")
    await run("DATA before RCPT", smtp.execute_command(b"DATA"))
    assert await run("RCPT", smtp.execute_command(b"RCPT", b"TO:<r@dest.org>")) == (OK, "2.1.5 Recipient OK")
    assert await run("RSET", smtp.execute_command(b"RSET")) == (OK, "2.0.0 OK")
    assert await run("NOOP", smtp.execute_command(b"NOOP")) == (OK, "2.0.0 OK")
    await run("MAIL", smtp.execute_command(b"MAIL", f"FROM:<{p.alias}>".encode()))
    await run("RCPT", smtp.execute_command(b"RCPT", b"TO:<r@dest.org>"))
    code, text = await run("DATA", smtp.data(message()))
    assert code == OK and QUEUED.match(text)
    await run("MAIL refused", smtp.execute_command(b"MAIL", b"FROM:<nobody@example.com>"))
    assert await run("QUIT", smtp.execute_command(b"QUIT")) == (CLOSING, "2.0.0 Bye")
    bad = [(label, code, text) for label, code, text in seen
           if not (ESC.match(text) and ESC.match(text).group(1) == str(code)[0])]
    assert bad == []
    assert {label: code for label, code, _ in seen}["unknown command"] == 500
    assert [(c, t) for label, c, t in seen if label == "AUTH again"] == [(BAD_SEQUENCE, "5.5.1 Already authenticated")]


async def test_replies_before_ehlo_also_carry_enhanced_status_codes(env):
    raw, greeting = await RawSMTP.open(port_of(env.gw, "smtps"), tls=True)
    assert greeting[0] == 220
    replies = [await raw.cmd(b"RSET"), await raw.cmd(b"MAIL FROM:<app@example.com>"), await raw.cmd(b"QUIT")]
    await raw.close()
    assert replies == [(OK, "2.0.0 OK"), (BAD_SEQUENCE, "5.5.1 Error: send HELO first"), (CLOSING, "2.0.0 Bye")]


# -- documented limits ------------------------------------------------------------------------------------
async def test_max_recipients_is_enforced(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_recipients": 3})
    p = provision(gw, sink.port)
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert (await reply(smtp.mail(p.alias)))[0] == OK
    for i in range(3):
        assert await reply(smtp.rcpt(f"r{i}@dest.org")) == (OK, "2.1.5 Recipient OK")
    code, text = await reply(smtp.rcpt("r3@dest.org"))
    await smtp.quit()
    assert code == INSUFFICIENT and text.startswith("4.5.3 "), (code, text)


async def test_auth_lockout_after_repeated_failures(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"auth_max_failures": 2, "auth_lockout": 60})
    p = provision(gw, sink.port)
    smtp = await client(gw, "smtps")
    for _ in range(2):
        assert (await reply(smtp.auth_plain("apikey", corrupt(p.key))))[0] == AUTH_INVALID
    await smtp.quit()
    raw, greeting = await RawSMTP.open(port_of(gw, "smtps"), tls=True)
    assert (await raw.cmd(b"EHLO client.test"))[0] == OK
    # even the right key, while locked out: 421 4.7.0 and the session is closed
    code, text = await raw.cmd(b"AUTH PLAIN " + auth_plain_arg("apikey", p.key))
    assert (code, text) == (UNAVAILABLE, "4.7.0 Too many failed authentication attempts, try again later")
    assert await raw.reader.read() == b""
    await raw.close()
    assert gw.store.queue.list_messages() == [] or all(m.source == "system" for m in gw.store.queue.list_messages())


# -- 4. alias verification by email --------------------------------------------------------------------
async def test_alias_verification_email_and_link(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(start=False)
    p = provision(gw, sink.port)
    alias, qid = gw.admin.add_alias("new@example.com", account="acme", ip_pool="default")
    assert alias.verified is False
    queued = gw.store.queue.show(qid)
    assert (queued.source, queued.mail_from, queued.subject) == ("system", SYSTEM_SENDER, "Verify your sending address")
    assert [(r.address, r.state) for r in queued.recipients] == [("new@example.com", "queued")]
    assert sink.received == []

    await gw.start()
    await wait_for(lambda: any(r.rcpt_tos == ["new@example.com"] for r in sink.received))
    got = next(r for r in sink.received if r.rcpt_tos == ["new@example.com"])
    assert got.mail_from == SYSTEM_SENDER
    mail = email.message_from_bytes(got.data, policy=email.policy.default)
    assert mail["To"] == "new@example.com" and mail["Subject"] == "Verify your sending address"
    text = mail.get_content()
    api_port = int(gw.settings.api.listen.rsplit(":", 1)[1])
    links = re.findall(r"http://\S+/api/v1/aliases/verify/[A-Za-z0-9_-]+", text)
    assert len(links) == 1 and links[0].startswith(f"http://127.0.0.1:{api_port}/api/v1/aliases/verify/")
    await wait_for(lambda: gw.store.queue.show(qid).state == "delivered")

    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert await reply(smtp.mail("new@example.com")) == (SENDER_REFUSED, "5.7.1 Sender address not allowed for this login")
    async with httpx.AsyncClient(timeout=5) as http:
        bad = await http.get(f"http://127.0.0.1:{api_port}/api/v1/aliases/verify/{'x' * 43}")
        assert bad.status_code == 404 and "not valid" in bad.text
        assert gw.store.directory.find_alias("new@example.com").verified is False
        page = await http.get(links[0])  # opening the link (a mail scanner does) verifies nothing
        assert page.status_code == 200 and '<form method="post">' in page.text
        assert gw.store.directory.find_alias("new@example.com").verified is False
        ok = await http.post(links[0])  # the page's button
        assert ok.status_code == 200 and "new@example.com is verified" in ok.text
        assert gw.store.directory.find_alias("new@example.com").verified is True
        again = await http.post(links[0])
        assert again.status_code == 404  # a link works once

    stage, code, text = await transaction(smtp, "new@example.com", ["r@dest.org"], message(from_="new@example.com"))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text), text
    await wait_for(lambda: len(received_from(sink, "new@example.com")) == 1)


def test_trusted_networks_match_ipv4_mapped_peers():
    import ipaddress

    from relay.submission.pipeline import _trusted_account

    nets = ((ipaddress.ip_network("10.0.0.0/8"), "acme"), (ipaddress.ip_network("2001:db8::/32"), "six"))
    assert _trusted_account("10.1.2.3", nets) == "acme"
    assert _trusted_account("::ffff:10.1.2.3", nets) == "acme"  # a dual-stack listener's view of it
    assert _trusted_account("2001:db8::1", nets) == "six"
    assert _trusted_account("192.168.0.1", nets) is None
    assert _trusted_account("not-an-ip", nets) is None


async def test_a_large_message_with_leading_dots_arrives_byte_for_byte(env):
    """DATA is read as one block (relay.smtp.data): megabytes in many TCP segments, dot-stuffed lines."""
    gw, sink, p = env.gw, env.sink, env.p
    body = b"".join(b".%06d " % i + b"x" * 50 + (b"\r\n.\r\n" if i % 997 == 0 else b"\r\n") for i in range(60000))
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message(subject="big", body=body))
    await smtp.quit()
    assert (stage, code) == ("DATA", 250) and QUEUED.match(text), text
    await wait_for(lambda: len(received_from(sink, p.alias)) == 1, timeout=30)
    got = received_from(sink, p.alias)[0].data
    assert len(body) > 3_000_000 and got.endswith(b"\r\n\r\n" + body)
