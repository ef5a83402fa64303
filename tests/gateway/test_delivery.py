"""Delivery over real SMTP: client -> gateway -> aiosmtpd upstream sinks.

Every test asserts the per-recipient state the store keeps (``queue.show``) and exactly what each
sink received. The alias verification mail that ``provision`` queues is delivered too; tests wait
for it first (``settle``) so that scripted sink replies hit the test's own messages.
"""

from __future__ import annotations

import asyncio
import email
import uuid
import datetime as dt
from collections import Counter
from email import policy as email_policy

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP, Envelope, Session

from policies.suppression_store import Suppressions
from relay.delivery.probe import probe
from relay.delivery.upstream import Upstream, UpstreamConfig
from relay.store import utcnow
from relay.store.queue import FINAL, PENDING
from tests.conftest import Received, Sink, free_port, port_of, provision, wait_for

SENDER = "app@example.com"


# -- helpers ------------------------------------------------------------------------------------------
def make_msg(to: list[str], subject: str = "hello", message_id: str | None = None) -> tuple[bytes, str]:
    mid = message_id or f"<{uuid.uuid4().hex}@example.com>"
    raw = (f"From: App <{SENDER}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
           f"\r\nhello {subject}\r\n").encode()
    return raw, mid


async def submit(gw, key: str, batch: list[tuple[list[str], bytes]]) -> list[str]:
    """Send each (recipients, raw) on ONE authenticated submission connection; return the queue ids."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "submission"), start_tls=True,
                           validate_certs=False, timeout=10)
    await smtp.connect()
    await smtp.login("apikey", key)
    ids = []
    try:
        for rcpts, raw in batch:
            errors, reply = await smtp.sendmail(SENDER, rcpts, raw)
            assert not errors, errors
            assert "queued as msg_" in reply, reply
            ids.append(reply.rsplit(" ", 1)[1])
    finally:
        await smtp.quit()
    return ids


def suppressed(gw, account_id: str, addresses: list[str]) -> dict[str, str]:
    """address -> reason of the account's active suppression entries (the suppression policy's store)."""
    book = Suppressions(gw.store.sessions, gw.store.reads)
    return {a: rec.reason for a in addresses if (rec := book.lookup(account_id, a)) is not None}


def pending(gw) -> int:
    counts = gw.store.queue.count_by_state()
    return sum(counts.get(s, 0) for s in PENDING)


async def settle(gw, timeout: float = 10.0) -> None:
    """Nothing left to deliver (every recipient in a final state)."""
    await wait_for(lambda: pending(gw) == 0, timeout)


def final(gw, qid: str) -> bool:
    view = gw.store.queue.show(qid)
    return all(r.state in FINAL for r in view.recipients)


async def wait_final(gw, *qids: str, timeout: float = 10.0):
    await wait_for(lambda: all(final(gw, q) for q in qids), timeout)
    return [gw.store.queue.show(q) for q in qids]


def rcpt_view(view, address: str):
    (r,) = [r for r in view.recipients if r.address == address]
    return r


def events_of(view, address: str):
    return [e for e in view.events if e.recipient == address]


def by_message_id(sink: Sink) -> Counter:
    c: Counter = Counter()
    for rec in sink.received:
        mid = email.message_from_bytes(rec.data, policy=email_policy.compat32).get("Message-ID")
        c[(mid or "").strip()] += 1
    return c


def dsns(sink: Sink) -> list:
    """What the sink received that is a delivery status notification (judged by its header block)."""
    out = []
    for r in sink.received:
        head = r.data.split(b"\r\n\r\n", 1)[0].lower()
        if b"multipart/report" in head and b"delivery-status" in head:
            out.append(r)
    return out


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email_policy.default)


def dsn_messages(gw):
    return [m for m in gw.store.queue.list_messages(limit=1000) if m.source == "dsn"]


# A short lease, so that a test that went wrong shows up as a retry rather than a 300 s hang.
SHORT_LEASE = 2.0


async def new_gw(gateway_factory, db_url: str | None = None, **delivery):
    gw = await gateway_factory(db_url, delivery={"lease_seconds": SHORT_LEASE, **delivery})
    gw.router.cooldown = 0.3
    return gw


async def start_gw(gateway_factory, sink_port: int, db_url: str | None = None, **delivery):
    gw = await new_gw(gateway_factory, db_url, **delivery)
    p = provision(gw, sink_port)
    return gw, p


class AlwaysSink(Sink):
    """Answers every DATA with the same reply (a permanently unhappy upstream)."""

    always: str = "451 4.3.0 try later"

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        return self.always


_MODE = {"pipelining": True}


# Every test here runs twice: against upstreams that advertise PIPELINING (the envelope goes in one
# write, relay.delivery.transaction._Pipelined) and against ones that do not (aiosmtplib, one by one).
@pytest.fixture(params=["pipelining", "one-by-one"], autouse=True)
def pipelining(request, monkeypatch) -> bool:
    on = request.param == "pipelining"
    monkeypatch.setitem(_MODE, "pipelining", on)
    return on


@pytest.fixture
async def sink_factory(sink_factory, pipelining):
    async def make(port: int | None = None) -> Sink:
        return await sink_factory(port, pipelining=pipelining)

    return make


async def start_sink(cls, port: int | None = None) -> Sink:
    sink = cls(port or free_port(), pipelining=_MODE["pipelining"])
    await sink.start()
    return sink


# -- retries and bounces ----------------------------------------------------------------------------
async def test_4xx_then_250_is_delivered_on_retry(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    before = len(sink.received)
    sink.data_replies = ["451 4.3.0 try later"]
    raw, mid = make_msg(["r@dest.org"], "retry me")
    (qid,) = await submit(gw, p.key, [(["r@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)

    r = rcpt_view(view, "r@dest.org")
    assert r.state == "delivered"
    assert r.attempts == 2
    assert r.upstream == "sink"
    assert r.last_code == 250
    ev = events_of(view, "r@dest.org")
    assert [e.type for e in ev] == ["accepted", "deferred", "delivered"]
    assert ev[1].code == 451 and "try later" in ev[1].reply
    assert ev[2].upstream == "sink" and ev[2].code == 250 and "stored" in ev[2].reply
    assert ev[0].at <= ev[1].at <= ev[2].at

    mine = sink.received[before:]
    assert len(mine) == 1
    assert mine[0].mail_from == SENDER and mine[0].rcpt_tos == ["r@dest.org"]
    assert by_message_id(sink)[mid] == 1
    assert not dsn_messages(gw)


async def test_5xx_bounces_sends_one_dsn_and_suppresses(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    before = len(sink.received)
    sink.data_replies = ["550 5.1.1 no such user"]
    raw, mid = make_msg(["gone@dest.org"], "Bounce subject 42")
    (qid,) = await submit(gw, p.key, [(["gone@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)

    r = rcpt_view(view, "gone@dest.org")
    assert (r.state, r.attempts, r.last_code, r.upstream) == ("bounced", 1, 550, "sink")
    ev = events_of(view, "gone@dest.org")
    assert [e.type for e in ev] == ["accepted", "bounced"]
    assert ev[1].upstream == "sink" and ev[1].reply == "5.1.1 no such user"

    # the DSN: queued as system mail from <> to the envelope sender, delivered through the default pool
    await wait_for(lambda: len(dsns(sink)) == 1)
    await settle(gw)
    (d,) = dsns(sink)
    assert d.mail_from in ("", "<>") and d.rcpt_tos == [SENDER]  # aiosmtpd reports MAIL FROM:<> as "<>"
    assert len(sink.received) == before + 1  # the original never arrived: only the DSN
    assert by_message_id(sink)[mid] == 0
    msg = parse(d.data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = {p_.get_content_type(): p_ for p_ in msg.get_payload()}
    _, block = parts["message/delivery-status"].get_payload()
    assert block["Final-Recipient"] == "rfc822; gone@dest.org"
    assert block["Action"] == "failed" and block["Status"] == "5.1.1"
    headers = parts["text/rfc822-headers"].get_payload()
    assert "Subject: Bounce subject 42" in headers and mid in headers

    (dmsg,) = dsn_messages(gw)
    assert dmsg.mail_from == "" and dmsg.account_id == view.account_id
    assert [(x.address, x.state) for x in dmsg.recipients] == [(SENDER, "delivered")]

    assert suppressed(gw, view.account_id, ["gone@dest.org", "other@dest.org"]) == {
        "gone@dest.org": "hard_bounce"}


async def test_soft_5xx_bounces_without_suppression(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    sink.data_replies = ["554 5.7.1 rejected as spam"]
    raw, _ = make_msg(["x@dest.org"], "spammy")
    (qid,) = await submit(gw, p.key, [(["x@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)
    assert rcpt_view(view, "x@dest.org").state == "bounced"
    await wait_for(lambda: len(dsns(sink)) == 1)
    assert suppressed(gw, view.account_id, ["x@dest.org"]) == {}


async def test_a_bouncing_dsn_gets_no_dsn(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    before = len(sink.received)
    sink.data_replies = ["550 5.1.1 no such user", "550 5.1.1 sender mailbox gone"]
    raw, _ = make_msg(["gone@dest.org"], "double bounce")
    (qid,) = await submit(gw, p.key, [(["gone@dest.org"], raw)])
    await wait_final(gw, qid)
    await wait_for(lambda: len(dsn_messages(gw)) == 1 and final(gw, dsn_messages(gw)[0].id))
    (dmsg,) = dsn_messages(gw)
    dview = gw.store.queue.show(dmsg.id)
    assert [(r.address, r.state, r.last_code) for r in dview.recipients] == [(SENDER, "bounced", 550)]
    # give the scheduler time to (wrongly) produce a DSN about the DSN
    await asyncio.sleep(0.5)
    assert len(dsn_messages(gw)) == 1
    assert len(gw.store.queue.list_messages(limit=1000)) == 3  # verification, original, one DSN
    assert len(sink.received) == before  # both were refused; nothing else was sent
    assert not sink.data_replies


async def test_rcpt_level_550_bounces_one_recipient_delivers_the_other(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    before = len(sink.received)
    sink.rcpt_replies = {"bad@dest.org": "550 5.1.1 no such user"}
    raw, mid = make_msg(["good@dest.org", "bad@dest.org"], "mixed")
    (qid,) = await submit(gw, p.key, [(["good@dest.org", "bad@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)
    good, bad = rcpt_view(view, "good@dest.org"), rcpt_view(view, "bad@dest.org")
    assert (good.state, good.attempts, good.last_code) == ("delivered", 1, 250)
    assert (bad.state, bad.attempts, bad.last_code, bad.last_reply) == ("bounced", 1, 550, "5.1.1 no such user")
    assert [e.type for e in events_of(view, "bad@dest.org")] == ["accepted", "bounced"]
    assert events_of(view, "bad@dest.org")[1].upstream == "sink"

    await wait_for(lambda: len(dsns(sink)) == 1)
    await settle(gw)
    mine = [r for r in sink.received[before:] if r not in dsns(sink)]
    assert len(mine) == 1 and mine[0].rcpt_tos == ["good@dest.org"]
    assert by_message_id(sink)[mid] == 1
    (d,) = dsns(sink)
    _, *blocks = [x for x in parse(d.data).get_payload() if x.get_content_type() == "message/delivery-status"][0] \
        .get_payload()
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bad@dest.org"]
    assert len(dsn_messages(gw)) == 1
    assert suppressed(gw, view.account_id, ["bad@dest.org", "good@dest.org"]) == {
        "bad@dest.org": "hard_bounce"}


class OnceRcptSink(Sink):
    """``rcpt_once``: address -> reply given to the first RCPT for it only."""

    def __init__(self, port: int, **kw) -> None:
        super().__init__(port, **kw)
        self.rcpt_once: dict[str, str] = {}

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.rcpt_once.pop(address, None)
        if reply:
            return reply
        return await super().handle_RCPT(server, session, envelope, address, options)


async def test_rcpt_level_4xx_retries_only_that_recipient(gateway_factory):
    sink = await start_sink(OnceRcptSink)
    try:
        gw, p = await start_gw(gateway_factory, sink.port)
        await settle(gw)
        before = len(sink.received)
        sink.rcpt_once = {"later@dest.org": "452 4.2.2 mailbox busy"}
        raw, mid = make_msg(["now@dest.org", "later@dest.org"], "partly later")
        (qid,) = await submit(gw, p.key, [(["now@dest.org", "later@dest.org"], raw)])
        (view,) = await wait_final(gw, qid)
        now, later = rcpt_view(view, "now@dest.org"), rcpt_view(view, "later@dest.org")
        assert (now.state, now.attempts) == ("delivered", 1)
        assert (later.state, later.attempts) == ("delivered", 2)
        assert [e.type for e in events_of(view, "later@dest.org")] == ["accepted", "deferred", "delivered"]
        assert [r.rcpt_tos for r in sink.received[before:]] == [["now@dest.org"], ["later@dest.org"]]
        assert by_message_id(sink)[mid] == 2  # one copy per recipient, nobody twice
        assert not dsn_messages(gw)
    finally:
        await sink.stop()


async def test_rcpt_550_and_451_with_none_accepted_bounces_the_550(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    sink.rcpt_replies = {"bad@dest.org": "550 5.1.1 no such user", "busy@dest.org": "451 4.2.0 busy"}
    raw, _ = make_msg(["bad@dest.org", "busy@dest.org"], "none accepted")
    (qid,) = await submit(gw, p.key, [(["bad@dest.org", "busy@dest.org"], raw)])
    await wait_for(lambda: rcpt_view(gw.store.queue.show(qid), "bad@dest.org").attempts >= 1
                   and rcpt_view(gw.store.queue.show(qid), "busy@dest.org").attempts >= 1)
    view = gw.store.queue.show(qid)
    bad, busy = rcpt_view(view, "bad@dest.org"), rcpt_view(view, "busy@dest.org")
    assert busy.state in ("deferred", "queued", "delivering")
    assert (bad.state, bad.last_code) == ("bounced", 550)


# -- upstream selection -------------------------------------------------------------------------------
async def test_priority_failover_when_the_first_upstream_is_down(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await new_gw(gateway_factory)
    dead = free_port()
    gw.admin.add_upstream(name="primary", ip_pool="default", host="127.0.0.1", port=dead, encryption="none",
                          priority=0)
    gw.admin.add_upstream(name="backup", ip_pool="default", host="127.0.0.1", port=sink.port, encryption="none",
                          priority=1)
    gw.load_upstreams()
    p = provision(gw, sink.port, upstream="backup")
    assert [u.name for u in gw.router.order("default")] == ["primary", "backup"]
    await settle(gw)
    batch = [make_msg([f"r{i}@dest.org"], f"failover {i}") for i in range(6)]
    qids = await submit(gw, p.key, [([f"r{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])
    views = await wait_final(gw, *qids)
    for i, v in enumerate(views):
        r = rcpt_view(v, f"r{i}@dest.org")
        assert (r.state, r.upstream, r.attempts) == ("delivered", "backup", 1)
        ev = events_of(v, f"r{i}@dest.org")
        assert [e.type for e in ev] == ["accepted", "delivered"] and ev[1].upstream == "backup"
    counts = by_message_id(sink)
    assert all(counts[mid] == 1 for _, mid in batch)
    assert gw.router.breakers[[u for u in gw.router.all_upstreams() if u.name == "primary"][0].cfg.id].failures >= 1


async def test_weights_share_the_load_among_equal_priorities(gateway_factory, sink_factory):
    heavy, light = await sink_factory(), await sink_factory()
    gw = await new_gw(gateway_factory)
    gw.admin.add_upstream(name="heavy", ip_pool="default", host="127.0.0.1", port=heavy.port, encryption="none",
                          weight=3)
    gw.admin.add_upstream(name="light", ip_pool="default", host="127.0.0.1", port=light.port, encryption="none",
                          weight=1)
    p = provision(gw, heavy.port, upstream="heavy")
    await settle(gw)
    n = 48
    batch = [make_msg([f"w{i}@dest.org"], f"weight {i}") for i in range(n)]
    qids = await submit(gw, p.key, [([f"w{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])
    views = await wait_final(gw, *qids, timeout=20)
    ups = Counter(v.recipients[0].upstream for v in views)
    assert all(v.recipients[0].state == "delivered" for v in views)
    h, l_ = by_message_id(heavy), by_message_id(light)
    mids = [mid for _, mid in batch]
    assert all(h[m] + l_[m] == 1 for m in mids)
    got_heavy, got_light = sum(h[m] for m in mids), sum(l_[m] for m in mids)
    assert (got_heavy, got_light) == (ups["heavy"], ups["light"])
    assert got_light > 0 and got_heavy > got_light  # expected ~36 / ~12


async def test_all_upstreams_down_then_one_comes_back(gateway_factory, sink_factory):
    port_a, port_b = free_port(), free_port()
    gw = await new_gw(gateway_factory)
    gw.admin.add_upstream(name="a", ip_pool="default", host="127.0.0.1", port=port_a, encryption="none")
    gw.admin.add_upstream(name="b", ip_pool="default", host="127.0.0.1", port=port_b, encryption="none",
                          priority=1)
    p = provision(gw, port_a, upstream="a")
    batch = [make_msg([f"d{i}@dest.org"], f"down {i}") for i in range(5)]
    qids = await submit(gw, p.key, [([f"d{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])
    await wait_for(lambda: all("deferred" in [e.type for e in gw.store.queue.show(q).events] for q in qids))
    view = gw.store.queue.show(qids[0])
    assert view.recipients[0].state in ("deferred", "queued", "delivering")
    assert "deferred" in [e.type for e in view.events]

    sink = await sink_factory(port_b)  # the second one comes back on its old port
    views = await wait_final(gw, *qids)
    assert all(v.recipients[0].state == "delivered" and v.recipients[0].upstream == "b" for v in views)
    await settle(gw)
    counts = by_message_id(sink)
    assert all(counts[mid] == 1 for _, mid in batch)
    assert sorted(counts.values()) == [1] * len(counts)  # verification mail included: nothing twice
    assert not dsn_messages(gw)


async def test_mail_waits_for_an_open_breaker_without_using_up_attempts(gateway_factory, sink_factory):
    """The only upstream is marked down: mail that arrives meanwhile is not tried and not counted as
    an attempt; it is parked (one deferral each, no claim or write while it waits) until a probe of
    the upstream (a connection test, no mail) succeeds, and then delivered once."""
    port = free_port()
    gw = await new_gw(gateway_factory, retry_base=0.1, retry_max=0.2)
    p = provision(gw, port)
    up = gw.router.all_upstreams()[0]
    for _ in range(gw.router.threshold):
        gw.router.failure(up)  # marked down, as after consecutive failures
    gw.router.cooldown = 1.5
    gw.router.breakers[up.cfg.id].open_until = gw.router.clock() + 1.5
    batch = [make_msg([f"w{i}@dest.org"], f"wait {i}") for i in range(4)]
    started = utcnow()
    qids = await submit(gw, p.key, [([f"w{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])

    def waiting(q: str) -> bool:
        return any(e.type == "deferred" for e in gw.store.queue.show(q).events)

    await wait_for(lambda: all(waiting(q) for q in qids), 5)
    for q in qids:
        r = gw.store.queue.show(q).recipients[0]
        assert (r.state, r.attempts, r.last_code) == ("deferred", 0, 451)
        assert "marked down" in r.last_reply
        assert r.next_attempt_at >= started + dt.timedelta(seconds=gw.scheduler.park_seconds - 5)  # parked
    await asyncio.sleep(0.5)
    assert all([e.type for e in gw.store.queue.show(q).events] == ["accepted", "deferred"] for q in qids)
    sink = await sink_factory(port)  # the upstream is back; the prober finds it
    views = await wait_final(gw, *qids)
    assert [(v.recipients[0].state, v.recipients[0].attempts) for v in views] == [("delivered", 1)] * 4
    for v in views:  # waiting left one deferral each, not one per probe cycle
        assert [e.type for e in v.events] == ["accepted", "deferred", "delivered"]
    counts = by_message_id(sink)
    assert all(counts[mid] == 1 for _, mid in batch)


async def test_mail_held_back_by_a_down_pool_is_due_when_its_breaker_closes(gateway_factory, sink_factory):
    """Mail deferred while the breaker's probe was in flight waits (tens of seconds here); when the
    probe succeeds, that mail is due at once, not at the end of its backoff."""
    port = free_port()
    gw = await new_gw(gateway_factory, retry_base=30, retry_max=60)
    p = provision(gw, port)
    up = gw.router.all_upstreams()[0]
    for _ in range(gw.router.threshold):
        gw.router.failure(up)
    breaker = gw.router.breakers[up.cfg.id]
    gw.router.cooldown = 60
    breaker.open_until = gw.router.clock()
    breaker.probing = gw.router.clock()  # another delivery is probing it: this mail is held back
    batch = [make_msg([f"h{i}@dest.org"], f"held {i}") for i in range(3)]
    qids = await submit(gw, p.key, [([f"h{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])
    await wait_for(lambda: all(gw.store.queue.show(q).recipients[0].state == "deferred" for q in qids), 5)
    for q in qids:
        assert gw.store.queue.show(q).recipients[0].next_attempt_at > utcnow() + dt.timedelta(seconds=10)
    sink = await sink_factory(port)
    breaker.probing = 0.0  # the probe: the next delivery tries the upstream, and it answers
    probe_raw, probe_mid = make_msg(["probe@dest.org"], "probe")
    await submit(gw, p.key, [(["probe@dest.org"], probe_raw)])
    views = await wait_final(gw, *qids, timeout=10)
    assert [v.recipients[0].state for v in views] == ["delivered"] * 3
    counts = by_message_id(sink)
    assert all(counts[mid] == 1 for _, mid in batch) and counts[probe_mid] == 1


# -- sessions -------------------------------------------------------------------------------------------
async def test_421_in_a_reused_session_is_retried_and_delivered_once(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)  # the verification mail opened the pooled session
    assert sink.connections == 1
    raw1, mid1 = make_msg(["one@dest.org"], "first")
    (q1,) = await submit(gw, p.key, [(["one@dest.org"], raw1)])
    (v1,) = await wait_final(gw, q1)
    assert rcpt_view(v1, "one@dest.org").state == "delivered"
    assert sink.connections == 1  # kept and reused

    sink.data_replies = ["421 4.3.2 shutting down"]
    raw2, mid2 = make_msg(["two@dest.org"], "second")
    (q2,) = await submit(gw, p.key, [(["two@dest.org"], raw2)])
    (v2,) = await wait_final(gw, q2)
    r = rcpt_view(v2, "two@dest.org")
    assert (r.state, r.attempts) == ("delivered", 2)
    ev = events_of(v2, "two@dest.org")
    assert [e.type for e in ev] == ["accepted", "deferred", "delivered"]
    assert ev[1].code == 421
    assert sink.connections == 2  # a fresh session after the 421
    counts = by_message_id(sink)
    assert counts[mid1] == 1 and counts[mid2] == 1


async def test_connection_reuse(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await new_gw(gateway_factory)
    gw.admin.add_upstream(name="sink", ip_pool="default", host="127.0.0.1", port=sink.port, encryption="none",
                          max_connections=3)
    p = provision(gw, sink.port)
    await settle(gw)
    batch = [make_msg([f"c{i}@dest.org"], f"reuse {i}") for i in range(30)]
    qids = await submit(gw, p.key, [([f"c{i}@dest.org"], raw) for i, (raw, _) in enumerate(batch)])
    views = await wait_final(gw, *qids)
    assert all(v.recipients[0].state == "delivered" for v in views)
    counts = by_message_id(sink)
    assert all(counts[mid] == 1 for _, mid in batch)
    (up,) = gw.router.all_upstreams()
    assert 1 <= sink.connections <= 3
    assert up.connections_opened == sink.connections


async def test_probe_reports_success_and_failure_without_raising(sink_factory):
    sink = await sink_factory()
    cfg = UpstreamConfig(id="up_probe", name="probe", host="127.0.0.1", port=sink.port, encryption="none")
    up = Upstream(cfg, local_hostname="relay.test", connect_timeout=2, command_timeout=2)
    ok = await probe(up)
    assert ok["success"] is True
    assert ok["message"] == "SMTP connection successful"
    assert isinstance(ok["latencyMs"], int) and 0 <= ok["latencyMs"] < 2000
    assert "error" not in ok
    assert sink.connections == 1 and sink.received == []
    assert up.open_connections == 0

    dead = UpstreamConfig(id="up_dead", name="dead", host="127.0.0.1", port=free_port(), encryption="none")
    bad = await probe(Upstream(dead, local_hostname="relay.test", connect_timeout=2, command_timeout=2))
    assert bad["success"] is False
    assert bad["message"] == "SMTP connection failed"
    assert bad["error"] == f"refused: 127.0.0.1:{dead.port} refused the connection"
    assert isinstance(bad["latencyMs"], int)


async def test_dot_stuffing_is_transparent_end_to_end(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port)
    await settle(gw)
    mid = f"<{uuid.uuid4().hex}@example.com>"
    raw = (f"From: App <{SENDER}>\r\nTo: dots@dest.org\r\nSubject: dots\r\nMessage-ID: {mid}\r\n\r\n"
           ".leading dot\r\n..two dots\r\n.\r\nlast line\r\n").encode()
    (qid,) = await submit(gw, p.key, [(["dots@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)
    assert view.recipients[0].state == "delivered"
    (got,) = [r for r in sink.received if r.rcpt_tos == ["dots@dest.org"]]
    body = got.data.split(b"\r\n\r\n", 1)[1]
    assert body == b".leading dot\r\n..two dots\r\n.\r\nlast line\r\n"


# -- expiry ---------------------------------------------------------------------------------------------
async def test_expiry_marks_expired_and_queues_a_dsn(gateway_factory):
    sink = await start_sink(AlwaysSink)
    try:
        gw = await new_gw(gateway_factory, max_age=0.5)
        p = provision(gw, sink.port)
        raw, mid = make_msg(["late@dest.org"], "too late")
        (qid,) = await submit(gw, p.key, [(["late@dest.org"], raw)])
        (view,) = await wait_final(gw, qid)
        r = rcpt_view(view, "late@dest.org")
        assert r.state == "expired"
        assert r.attempts >= 1  # usually 2-4; a loaded machine may reach the deadline on the first try
        assert r.last_reply.startswith("message expired after retries; last reply:")
        types = [e.type for e in events_of(view, "late@dest.org")]
        # one deferral per failed attempt, and one per wait for the breaker (not attempts)
        assert types == ["accepted"] + ["deferred"] * (len(types) - 2) + ["expired"]
        assert len(types) - 2 >= r.attempts - 1
        assert suppressed(gw, view.account_id, ["late@dest.org"]) == {}

        def my_dsn():
            return [m for m in dsn_messages(gw) if [x.address for x in m.recipients] == [SENDER]]

        await wait_for(lambda: len(my_dsn()) == 1)
        (d,) = my_dsn()
        assert d.mail_from == "" and d.source == "dsn"
        assert d.account_id == view.account_id
        assert d.recipients[0].state in ("queued", "deferred", "delivering", "expired")
        body = parse(gw.store.queue.body(d.id))
        assert body.get_param("report-type") == "delivery-status"
        _, block = [x for x in body.get_payload() if x.get_content_type() == "message/delivery-status"][0] \
            .get_payload()
        assert block["Final-Recipient"] == "rfc822; late@dest.org" and block["Action"] == "failed"
        assert mid in [x for x in body.get_payload() if x.get_content_type() == "text/rfc822-headers"][0].get_payload()
        assert sink.received == []
        # the DSN expires in turn (same max_age) without a DSN of its own
        await wait_for(lambda: final(gw, d.id))
        await asyncio.sleep(0.3)
        assert len(my_dsn()) == 1
        assert all(m.mail_from != "" or m.source == "dsn" for m in gw.store.queue.list_messages(limit=1000))
    finally:
        await sink.stop()


# -- PostgreSQL -------------------------------------------------------------------------------------------
async def test_happy_path_on_postgresql(gateway_factory, sink_factory, pg_url):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port, pg_url)
    assert gw.store.dialect == "postgresql"
    raw, mid = make_msg(["pg@dest.org", "pg2@dest.org"], "on postgres")
    (qid,) = await submit(gw, p.key, [(["pg@dest.org", "pg2@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)
    for addr in ("pg@dest.org", "pg2@dest.org"):
        r = rcpt_view(view, addr)
        assert (r.state, r.attempts, r.upstream, r.last_code) == ("delivered", 1, "sink", 250)
        assert [e.type for e in events_of(view, addr)] == ["accepted", "delivered"]
    assert view.header_message_id == mid and view.subject == "on postgres"
    await settle(gw)
    assert by_message_id(sink)[mid] == 1
    (got,) = [r for r in sink.received if r.rcpt_tos != [p.alias]]
    assert sorted(got.rcpt_tos) == ["pg2@dest.org", "pg@dest.org"] and got.mail_from == SENDER


class _Alternating:
    """A stand-in for the scheduler's Random: jitter 0.0, 0.999, 0.0, ... (deterministic spread)."""

    def __init__(self) -> None:
        self.n = 0

    def random(self) -> float:
        self.n += 1
        return 0.0 if self.n % 2 else 0.999


class SlowOnceRcptSink(OnceRcptSink):
    data_delay = 0.8

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.data_delay)
        return await super().handle_DATA(server, session, envelope)


async def test_recipients_of_one_message_due_at_different_times_are_all_retried(gateway_factory):
    sink = await start_sink(SlowOnceRcptSink)
    try:
        gw, p = await start_gw(gateway_factory, sink.port, retry_base=1, retry_max=2, lease=300)
        await settle(gw)
        gw.scheduler.rand = _Alternating()  # A is due again after 0.5 s, B after ~1 s
        sink.rcpt_once = {"a@dest.org": "452 4.2.2 busy", "b@dest.org": "452 4.2.2 busy"}
        raw, mid = make_msg(["a@dest.org", "b@dest.org"], "two retry times")
        (qid,) = await submit(gw, p.key, [(["a@dest.org", "b@dest.org"], raw)])
        # A's retry takes 0.8 s at the sink; B falls due meanwhile. Both should be done well within 4 s.
        await wait_final(gw, qid, timeout=4)
        view = gw.store.queue.show(qid)
        assert [(r.address, r.state) for r in view.recipients] == [("a@dest.org", "delivered"),
                                                                  ("b@dest.org", "delivered")]
        got = Counter(a for r in sink.received for a in r.rcpt_tos if a in ("a@dest.org", "b@dest.org"))
        assert got == {"a@dest.org": 1, "b@dest.org": 1}
    finally:
        await sink.stop()


class _Zero:
    def random(self) -> float:
        return 0.0


async def test_a_retry_that_falls_due_before_the_attempt_has_finished_is_not_stranded(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port, lease=300)
    await settle(gw)
    gw.scheduler.rand = _Zero()  # the retry is due 0.1 s after the attempt started
    deliver = gw.scheduler.deliver

    async def deliver_then_linger(msg):  # outcome committed, worker slow to come back (a busy loop)
        await deliver(msg)
        await asyncio.sleep(0.6)

    gw.scheduler.deliver = deliver_then_linger
    sink.data_replies = ["451 4.3.0 try later"]
    raw, mid = make_msg(["r@dest.org"], "due early")
    (qid,) = await submit(gw, p.key, [(["r@dest.org"], raw)])
    (view,) = await wait_final(gw, qid, timeout=4)
    assert (view.recipients[0].state, view.recipients[0].attempts) == ("delivered", 2)
    assert by_message_id(sink)[mid] == 1


class SlowReplySink(Sink):
    """Takes the message at its final dot and answers ``delay`` seconds later (an upstream slow to answer)."""

    delay = 1.2

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.peer))
        await asyncio.sleep(self.delay)
        return "250 2.0.0 OK stored"


async def test_a_node_keeps_its_leases_while_it_works_whatever_its_poll_interval(gateway_factory, db_url):
    """The heartbeat renews the leases on its own clock: with a poll interval longer than the lease
    (60 s here, against 0.3 s), another node must still not take over mail this node is delivering."""
    sink = await start_sink(SlowReplySink)
    try:
        gw, p = await start_gw(gateway_factory, sink.port, db_url, lease_seconds=0.3, poll_interval=60)
        raw, mid = make_msg(["r@dest.org"], "held")
        (qid,) = await submit(gw, p.key, [(["r@dest.org"], raw)])
        await wait_for(lambda: by_message_id(sink)[mid] == 1, 5)  # the dot is in, the reply 1.2 s away
        await asyncio.sleep(0.7)  # more than two leases (a lapsed one would be taken now)
        taken = await asyncio.to_thread(gw.store.queue.claim_due, "node_other", 30)
        assert qid not in [m.id for m in taken]  # (the alias's verification mail waits for a poll: it may be)
        (view,) = await wait_final(gw, qid)
        assert [(r.state, r.attempts) for r in view.recipients] == [("delivered", 1)]
        assert [e.type for e in view.events] == ["accepted", "delivered"]  # nothing sent again
        assert by_message_id(sink)[mid] == 1
    finally:
        await sink.stop()


class RawUpstream:
    """A scripted upstream on plain asyncio streams that advertises PIPELINING: it records every
    read it makes and answers every complete command; ``split`` writes each reply byte by byte."""

    def __init__(self, split: bool) -> None:
        self.split = split
        self.reads: list[bytes] = []
        self.messages: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = free_port()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", self.port)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        buf, in_data = b"", False
        while chunk := await reader.read(65536):
            self.reads.append(chunk)
            buf += chunk
            out = b""
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.messages.append(buf[:end + 2])
                    buf, in_data = buf[end + 5:], False
                    out += b"250 2.0.0 taken\r\n"
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                line, buf = buf[:end], buf[end + 2:]
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out += b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                elif verb == b"DATA":
                    out += b"354 go ahead\r\n"
                    in_data = True
                elif verb == b"QUIT":
                    out += b"221 2.0.0 bye\r\n"
                else:
                    out += b"250 2.0.0 ok\r\n"
            for piece in ([out[i:i + 1] for i in range(len(out))] if self.split else [out]):
                writer.write(piece)
                await writer.drain()
                if self.split:
                    await asyncio.sleep(0.001)
        writer.close()


async def test_a_pipelining_upstream_gets_the_envelope_in_one_write(gateway_factory, pipelining):
    # The raw upstream always offers PIPELINING; the module's two runs differ in how it answers:
    # each burst of replies in one write, or byte by byte (the replies must be reassembled).
    up = RawUpstream(split=not pipelining)
    await up.start()
    try:
        gw, p = await start_gw(gateway_factory, up.port)
        await settle(gw)
        raw, mid = make_msg(["a@dest.org", "b@dest.org"], "pipelined")
        ids = await submit(gw, p.key, [(["a@dest.org", "b@dest.org"], raw), (["c@dest.org"], raw)])
        views = await wait_final(gw, *ids)
        assert [r.state for v in views for r in v.recipients] == ["delivered"] * 3
        assert sum(mid.encode() in m for m in up.messages) == 2
        # MAIL, both RCPTs and DATA arrived in one read (after RSET, on a reused session)
        envelopes = [r for r in up.reads if b"MAIL FROM:" in r]
        assert len(envelopes) == len(up.messages) >= 3
        assert any(r.endswith(b"RCPT TO:<a@dest.org>\r\nRCPT TO:<b@dest.org>\r\nDATA\r\n") for r in envelopes)
        assert all(r.startswith((b"MAIL FROM:", b"RSET\r\nMAIL FROM:")) and r.endswith(b"DATA\r\n")
                   for r in envelopes), up.reads
    finally:
        up.server.close()


@pytest.mark.parametrize("reply", ["550 5.7.1 sender refused", "451 4.3.0 try later"])
async def test_a_refused_mail_from_bounces_or_defers_and_nothing_is_sent(gateway_factory, sink_factory, reply):
    sink = await sink_factory()
    gw, p = await start_gw(gateway_factory, sink.port, retry_base=1, retry_max=2)
    await settle(gw)
    sink.mail_reply = reply
    raw, mid = make_msg(["x@dest.org"], "refused sender")
    (qid,) = await submit(gw, p.key, [(["x@dest.org"], raw)])
    await wait_for(lambda: rcpt_view(gw.store.queue.show(qid), "x@dest.org").attempts >= 1)
    r = rcpt_view(gw.store.queue.show(qid), "x@dest.org")
    assert (r.last_code, r.last_reply) == (int(reply[:3]), reply[4:])
    assert r.state == ("bounced" if reply[0] == "5" else "deferred")
    assert by_message_id(sink)[mid] == 0
    sink.mail_reply = None
    if reply[0] == "4":  # the upstream takes mail again: delivered on the retry, once
        await wait_final(gw, qid)
        assert rcpt_view(gw.store.queue.show(qid), "x@dest.org").state == "delivered"
        assert by_message_id(sink)[mid] == 1
