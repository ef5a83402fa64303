"""relay.store: migrations, SQLite durability settings, and the queue's state machine.

Every test that takes ``db_url`` runs on SQLite and on PostgreSQL. Time is passed explicitly
(``now=``) so leases and retries are checked without sleeping.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError

from relay.vocab import NotFound
from relay.store import MIGRATIONS, Store, utcnow
from relay.store import models as m
from relay.store.queue import NewMessage, Outcome

T0 = utcnow().replace(microsecond=0) + dt.timedelta(days=1)  # in the future: nothing else is due then


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def new(mid: str, recipients: list[str], *, created: float = 0, owner: str | None = None, lease: float = 300,
        account_id: str | None = None, suppressed: dict[str, str] | None = None, subject: str | None = None,
        body: bytes = b"From: a@example.com\r\n\r\nbody\r\n") -> NewMessage:
    return NewMessage(
        id=mid, ip_pool="default", mail_from="a@example.com", body=body, recipients=recipients,
        created_at=at(created), expires_at=at(created + 86400), account_id=account_id,
        header_message_id=f"<{mid}@relay.test>", subject=subject or mid, lease_owner=owner,
        lease_until=at(created + lease) if owner else None, suppressed=suppressed or {})


@pytest.fixture
def store(db_url):
    s = Store(db_url, node_id="node_test")
    s.migrate()
    yield s
    s.close()


def rcpts(store: Store, mid: str) -> dict[str, tuple]:
    return {r.address: (r.state, r.attempts, r.upstream, r.last_code) for r in store.queue.show(mid).recipients}


def events(store: Store, mid: str) -> list[tuple]:
    return [(e.type, e.recipient, e.upstream, e.code) for e in store.queue.show(mid).events]


def claimed(msgs) -> dict[str, list[str]]:
    return {q.id: sorted(q.recipients) for q in msgs}


# -- schema ---------------------------------------------------------------------------------------------
def test_migrations_run_twice_and_keep_data(db_url):
    first = Store(db_url)
    first.migrate()
    first.directory.create_account("acme")
    first.migrate()
    second = Store(db_url)
    second.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with second.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head]
    tables = set(sa.inspect(second.engine).get_table_names())
    assert {t.name for t in m.Base.metadata.sorted_tables} <= tables
    assert [a.name for a in second.directory.list_accounts()] == ["acme"]
    first.close()
    second.close()


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/sub/relay.db")
    store.migrate()
    conns = [store.engine.raw_connection() for _ in range(2)]  # every pooled connection is set up
    try:
        for conn in conns:
            cur = conn.cursor()
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            cur.close()
    finally:
        for conn in conns:
            conn.close()
    assert (tmp_path / "sub" / "relay.db").exists()
    store.close()


def test_sqlite_reads_do_not_wait_for_an_open_write_transaction(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/relay.db")
    store.migrate()
    store.directory.create_account("acme")
    writer = store.engine.connect()
    tx = writer.begin()  # BEGIN IMMEDIATE: holds the write lock, as a slow group commit would
    writer.execute(sa.insert(m.Account).values(id="acc_2", name="pending", created_at=utcnow()))
    pool = ThreadPoolExecutor(1)
    try:
        read = pool.submit(store.directory.list_accounts)
        try:
            names = [a.name for a in read.result(timeout=0.5)]
        except FutureTimeout:
            names = None
        assert names == ["acme"]  # the committed snapshot, at once
    finally:
        tx.rollback()
        writer.close()
        pool.shutdown(wait=True)
        store.close()


# -- enqueue and read back --------------------------------------------------------------------------------
def test_enqueue_a_batch_and_read_it_back(store):
    q = store.queue
    q.enqueue([
        new("msg_1", ["a@dest.org", "b@dest.org"], created=0, owner="node_test", subject="first"),
        new("msg_2", ["c@dest.org"], created=1, subject="second", body=b"From: a@example.com\r\n\r\n" + b"x" * 1000),
        new("msg_3", ["d@dest.org", "gone@dest.org"], created=2, suppressed={"gone@dest.org": "hard_bounce"}),
    ])
    listed = q.list_messages()
    assert [v.id for v in listed] == ["msg_3", "msg_2", "msg_1"]  # newest first
    assert [v.state for v in listed] == ["queued", "queued", "queued"]
    assert listed[0].events == ()  # listings carry no events

    v = q.show("msg_1")
    assert (v.ip_pool, v.mail_from, v.subject, v.header_message_id, v.source, v.sandbox) == (
        "default", "a@example.com", "first", "<msg_1@relay.test>", "smtp", False)
    assert (v.created_at, v.expires_at) == (at(0), at(86400))
    assert [(r.address, r.state, r.attempts, r.next_attempt_at, r.last_code) for r in v.recipients] == [
        ("a@dest.org", "queued", 0, at(0), None), ("b@dest.org", "queued", 0, at(0), None)]
    assert [(e.type, e.recipient, e.at) for e in v.events] == [
        ("accepted", "a@dest.org", at(0)), ("accepted", "b@dest.org", at(0))]

    assert q.show("msg_2").size == len(q.body("msg_2")) == len(b"From: a@example.com\r\n\r\n") + 1000
    assert q.body("msg_1") == b"From: a@example.com\r\n\r\nbody\r\n"

    v3 = q.show("msg_3")
    assert rcpts(store, "msg_3") == {"d@dest.org": ("queued", 0, None, None), "gone@dest.org": ("suppressed", 0, None, None)}
    assert [r.last_reply for r in v3.recipients if r.address == "gone@dest.org"] == ["hard_bounce"]
    assert sorted((e.type, e.recipient) for e in v3.events) == [
        ("accepted", "d@dest.org"), ("accepted", "gone@dest.org"), ("suppressed", "gone@dest.org")]
    assert v3.state == "queued"
    assert [x.id for x in q.list_messages(state="suppressed")] == ["msg_3"]
    assert q.count_by_state() == {"queued": 4, "suppressed": 1}
    assert q.next_due_at() == at(0)
    with pytest.raises(NotFound):
        q.show("msg_nope")


def test_enqueue_is_one_transaction(store):
    store.queue.enqueue([new("msg_1", ["a@dest.org"])])
    with pytest.raises(IntegrityError):
        store.queue.enqueue([new("msg_2", ["b@dest.org"]), new("msg_1", ["c@dest.org"])])
    assert [v.id for v in store.queue.list_messages()] == ["msg_1"]
    assert store.queue.count_by_state() == {"queued": 1}


# -- crash recovery and leases ------------------------------------------------------------------------------
def test_recover_sends_dot_sent_recipients_again_once_and_releases_other_leases(store):
    """A final dot without the upstream's reply is no delivery (RFC 5321 6.1): the recipient is due
    again at once (a possible duplicate), never recorded as delivered."""
    q = store.queue
    q.enqueue([new("msg_a", ["r1@dest.org", "r2@dest.org", "r3@dest.org"], owner="node_a"),
               new("msg_b", ["x1@dest.org", "x2@dest.org"], owner="node_b")])
    q.mark_dot_sent([("msg_a", "r1@dest.org", "up1"), ("msg_b", "x1@dest.org", "up2")], now=at(1))
    assert rcpts(store, "msg_a")["r1@dest.org"] == ("delivering", 0, "up1", None)

    assert q.recover("node_a", now=at(2)) == [("msg_a", "r1@dest.org")]
    assert rcpts(store, "msg_a") == {"r1@dest.org": ("deferred", 1, "up1", None),
                                     "r2@dest.org": ("queued", 0, None, None),
                                     "r3@dest.org": ("queued", 0, None, None)}
    assert ("deferred", "r1@dest.org", "up1", None) in events(store, "msg_a")
    assert not [e for e in events(store, "msg_a") if e[0] == "delivered"]
    assert q.show("msg_a").recipients[0].last_reply.startswith("sent again: the final dot went to the upstream")
    # node_b's work is untouched: its dot-sent recipient stays in flight, its lease holds
    assert rcpts(store, "msg_b")["x1@dest.org"] == ("delivering", 0, "up2", None)

    assert q.recover("node_a", now=at(3)) == []  # once

    # node_a's recipients are due at once for anyone, r1 included; node_b's are not (lease until t+300)
    assert claimed(q.claim_due("node_c", 1000, now=at(4))) == {"msg_a": ["r1@dest.org", "r2@dest.org", "r3@dest.org"]}

    # once node_b's lease has expired, its dot-sent recipient is sent again too, with the rest
    assert claimed(q.claim_due("node_c", 60, now=at(301))) == {"msg_b": ["x1@dest.org", "x2@dest.org"]}
    assert rcpts(store, "msg_b")["x1@dest.org"] == ("deferred", 1, "up2", None)
    assert not [e for e in events(store, "msg_b") if e[0] == "delivered"]


def test_recover_sends_journaled_dots_again_only_for_the_attempt_they_name(store):
    """The dot journal (relay.delivery.journal) names each released dot's attempt: a record counts
    while the recipient is still pending at that attempt, under this node's (or an expired) lease."""
    q = store.queue
    q.enqueue([new("msg_a", ["r1@dest.org", "r2@dest.org", "r3@dest.org"], owner="node_a"),
               new("msg_b", ["x1@dest.org"], owner="node_b")])
    # r3's first attempt ended (deferred by a 4xx after the dot): its record is stale
    q.record_outcomes([Outcome("msg_a", "r3@dest.org", "deferred", 451, "later", "up1", next_attempt_at=at(50))],
                      now=at(1))
    dots = [("msg_a", "r1@dest.org", 0), ("msg_a", "r2@dest.org", 3), ("msg_a", "r3@dest.org", 0),
            ("msg_b", "x1@dest.org", 0), ("msg_gone", "z@dest.org", 0)]
    assert q.recover("node_a", dots, now=at(2)) == [("msg_a", "r1@dest.org")]
    assert rcpts(store, "msg_a") == {"r1@dest.org": ("deferred", 1, None, None),
                                     "r2@dest.org": ("queued", 0, None, None),
                                     "r3@dest.org": ("deferred", 1, "up1", 451)}
    assert q.show("msg_a").recipients[0].last_reply.startswith("sent again")
    assert rcpts(store, "msg_b") == {"x1@dest.org": ("queued", 0, None, None)}  # node_b's lease holds
    assert q.recover("node_a", dots, now=at(3)) == []  # once: the attempt the record names is over
    assert q.recover("node_c", dots, now=at(400)) == [("msg_b", "x1@dest.org")]  # node_b's lease expired
    assert rcpts(store, "msg_b") == {"x1@dest.org": ("deferred", 1, None, None)}


def test_dot_journal_records_rotates_and_forgets_settled_generations(tmp_path):
    from relay.delivery.journal import DotJournal

    def record(journal, entries):
        write, gen = journal.prepare(entries)
        write()
        return gen

    j = DotJournal(tmp_path / "journal", "node_a", rotate_bytes=30)
    assert j.entries() == [] and j.files() == []
    g0 = record(j, [("msg_1", "a@dest.org", 0), ("msg_1", "b@dest.org", 0)])
    g1 = record(j, [("msg_2", "c@dest.org", 2)])  # over 30 bytes: a new generation
    assert (g0, g1) == (0, 1)
    assert [p.name for p in j.files()] == ["node_a.0.dots", "node_a.1.dots"]
    assert j.entries() == [("msg_1", "a@dest.org", 0), ("msg_1", "b@dest.org", 0), ("msg_2", "c@dest.org", 2)]
    j.settle(g1)  # the current generation stays while it is written to
    j.settle(g0)  # a retired one goes once all its attempts are settled
    assert [p.name for p in j.files()] == ["node_a.1.dots"]
    # a crash mid-write leaves a torn line: skipped; another owner's files are not ours
    with open(j.files()[0], "ab") as f:
        f.write(b"msg_3\td@dest")
    (tmp_path / "journal" / "node_b.0.dots").write_bytes(b"msg_9\tz@dest.org\t0\n")
    assert j.entries() == [("msg_2", "c@dest.org", 2)]
    # a new process of the same owner continues after the last generation, until reset
    k = DotJournal(tmp_path / "journal", "node_a")
    assert record(k, [("msg_4", "e@dest.org", 1)]) == 2
    k.reset()
    assert k.files() == [] and k.entries() == []
    assert (tmp_path / "journal" / "node_b.0.dots").exists()
    # journals of workers a run with fewer workers no longer has are worker 0's to recover
    for name in ("node_a.w1.0.dots", "node_a.w2.0.dots", "node_a.w2.1.dots", "node_b.w5.0.dots"):
        (tmp_path / "journal" / name).write_bytes(b"msg_9\tz@dest.org\t0\n")
    (orphan,) = DotJournal.orphans(tmp_path / "journal", "node_a", workers=2)
    assert orphan.owner == "node_a.w2" and len(orphan.entries()) == 2
    assert [o.owner for o in DotJournal.orphans(tmp_path / "journal", "node_a", workers=1)] == ["node_a.w1", "node_a.w2"]


def test_claim_due_leases_recipients_until_the_lease_expires(store):
    q = store.queue
    q.enqueue([new("msg_1", ["a@dest.org", "b@dest.org"], created=0), new("msg_2", ["c@dest.org"], created=5)])
    assert q.claim_due("node_a", 60, now=at(-1)) == []  # nothing is due before it was queued
    got = q.claim_due("node_a", 60, now=at(1))
    assert claimed(got) == {"msg_1": ["a@dest.org", "b@dest.org"]}
    assert (got[0].body, got[0].mail_from, got[0].ip_pool, got[0].attempts) == (
        q.body("msg_1"), "a@example.com", "default", 0)
    assert got[0].created_at == at(0) and got[0].expires_at == at(86400)

    assert claimed(q.claim_due("node_b", 60, now=at(30))) == {"msg_2": ["c@dest.org"]}
    assert q.claim_due("node_b", 60, now=at(60)) == []  # both leases still held
    assert claimed(q.claim_due("node_b", 60, now=at(62))) == {"msg_1": ["a@dest.org", "b@dest.org"]}

    # node_b defers a; b stays leased to node_b until t+122
    q.record_outcomes([Outcome("msg_1", "a@dest.org", "deferred", 451, "4.3.0 try later", "up1",
                               next_attempt_at=at(200))], now=at(70))
    assert rcpts(store, "msg_1")["a@dest.org"] == ("deferred", 1, "up1", 451)
    # a is not due yet, b is leased to node_b until t+122; c's lease (node_b, t+90) has expired
    assert claimed(q.claim_due("node_c", 60, now=at(100))) == {"msg_2": ["c@dest.org"]}
    assert q.next_due_at() == at(0)  # b is still queued
    got = q.claim_due("node_c", 60, now=at(201))
    assert claimed(got) == {"msg_1": ["a@dest.org", "b@dest.org"], "msg_2": ["c@dest.org"]}
    assert {x.id: x.attempts for x in got} == {"msg_1": 1, "msg_2": 0}
    assert q.claim_due("node_d", 60, now=at(202)) == []
    assert len(q.claim_due("node_d", 60, limit=1, now=at(300))) == 1


def test_record_outcomes_writes_states_and_events_and_leaves_suppression_to_the_bounce_stage(store):
    # hard bounces reach the suppression list through the bounce stage and the policies' suppression
    # book (tests/unit/events/test_bounces.py, tests/unit/policies/test_suppression_store.py), not here
    acc = store.directory.create_account("acme")
    q = store.queue
    q.enqueue([new("msg_1", ["bad@dest.org", "good@dest.org"], account_id=acc.id)])
    q.record_outcomes([
        Outcome("msg_1", "bad@dest.org", "bounced", 550, "5.1.1 no such user", "up1"),
        Outcome("msg_1", "good@dest.org", "delivered", 250, "2.0.0 OK", "up1"),
    ], now=at(10))
    assert rcpts(store, "msg_1") == {"bad@dest.org": ("bounced", 1, "up1", 550),
                                     "good@dest.org": ("delivered", 1, "up1", 250)}
    assert events(store, "msg_1")[2:] == [("bounced", "bad@dest.org", "up1", 550),
                                          ("delivered", "good@dest.org", "up1", 250)]
    with store.sessions() as s:
        assert s.execute(sa.select(m.Suppression.address)).all() == []


def test_retry_makes_deferred_recipients_due_and_delete_removes_everything(store):
    q = store.queue
    q.enqueue([new("msg_1", ["a@dest.org", "b@dest.org"]), new("msg_2", ["c@dest.org"])])
    q.record_outcomes([
        Outcome("msg_1", "a@dest.org", "deferred", 421, "4.4.2 later", "up1", next_attempt_at=at(3600)),
        Outcome("msg_1", "b@dest.org", "delivered", 250, "2.0.0 OK", "up1"),
        Outcome("msg_2", "c@dest.org", "deferred", 451, "4.3.0 later", "up1", next_attempt_at=at(3600)),
    ], now=at(1))
    assert q.claim_due("node_a", 60, now=at(10)) == []
    assert q.retry("msg_1", now=at(10)) == 1
    assert claimed(q.claim_due("node_a", 60, now=at(10))) == {"msg_1": ["a@dest.org"]}
    assert q.retry(now=at(20)) == 2  # every deferred recipient (a is still deferred while leased)
    assert claimed(q.claim_due("node_b", 60, now=at(20))) == {"msg_2": ["c@dest.org"]}
    with pytest.raises(NotFound):
        q.retry("msg_nope")

    q.delete("msg_1")
    for call in (q.show, q.body, q.delete):
        with pytest.raises(NotFound):
            call("msg_1")
    assert [v.id for v in q.list_messages()] == ["msg_2"]
    assert q.count_by_state() == {"deferred": 1}
    with store.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Event).where(m.Event.message_id == "msg_1")) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Recipient).where(m.Recipient.message_id == "msg_1")) == 0


def test_renew_leases_keeps_another_node_off_work_still_held(store):
    q = store.queue
    q.enqueue([new("msg_r", ["a@dest.org"], created=0, owner="node_a", lease=60)])
    assert q.claim_due("node_b", 60, now=at(30)) == []
    assert q.renew_leases("node_a", 60, now=at(50)) == 1  # held until t+110 now
    assert q.claim_due("node_b", 60, now=at(100)) == []
    assert claimed(q.claim_due("node_b", 60, now=at(111))) == {"msg_r": ["a@dest.org"]}
    assert q.renew_leases("node_a", 60, now=at(112)) == 0  # no longer ours


def test_old_events_are_pruned_in_batches(store):
    q = store.queue
    q.enqueue([new("msg_old", ["a@dest.org"]), new("msg_new", ["b@dest.org"])])
    q.record_outcomes([Outcome("msg_old", "a@dest.org", "deferred", 451, "later", "up1", next_attempt_at=at(50))] * 3,
                      now=at(1))
    q.record_outcomes([Outcome("msg_new", "b@dest.org", "deferred", 451, "later", "up1", next_attempt_at=at(900))],
                      now=at(800))
    assert len(events(store, "msg_old")) >= 3
    assert q.prune_events(at(100), batch=2) == 2  # one batch, oldest first
    while q.prune_events(at(100), batch=2):
        pass
    assert events(store, "msg_old") == []
    assert [e[0] for e in events(store, "msg_new")] == ["deferred"]  # at t+800: kept
