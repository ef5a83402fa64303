"""policies.suppression_store and the policy's SuppressionBook: the suppression list's storage,
owned by the built-in ``suppression`` policy. Runs on SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from policies.spec import NewSuppression, PolicyServices, SuppressionBook
from policies.suppression import StoredBook, SuppressionPolicy
from policies.suppression_store import Suppressions
from relay.store import Store, utcnow
from relay.store import models as m
from relay.store.runner import DbRunner
from relay.submission.policyset import PolicySet
from relay.vocab import NotFound

T0 = utcnow().replace(microsecond=0)


@pytest.fixture
def store(db_url):
    s = Store(db_url, node_id="node_test")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def services(store):
    runner = DbRunner(store.dialect)
    yield PolicyServices(sessions=store.sessions, reads=store.reads, runner=runner, clock=lambda: T0)
    runner.shutdown()


def test_record_adds_a_hard_bounce_once_per_address_and_account(store):
    acc = store.directory.create_account("acme")
    other = store.directory.create_account("other")
    supp = Suppressions(store.sessions, store.reads)
    supp.add(acc.id, [NewSuppression("bad@dest.org", "manual", expires_at=T0 - dt.timedelta(days=1))], T0)
    supp.record(acc.id, "Bad@Dest.org", "hard_bounce", "5.1.1 no such user", T0)
    supp.record(acc.id, "bad@dest.org", "hard_bounce", "5.1.1 still no such user", T0)  # updated, not a second row
    rec = supp.lookup(acc.id, "bad@dest.org", T0)
    assert rec is not None and (rec.reason, rec.detail, rec.expires_at) == ("hard_bounce", "5.1.1 still no such user",
                                                                          None)
    assert supp.lookup(other.id, "bad@dest.org", T0) is None
    with store.sessions() as s:
        assert [tuple(r) for r in s.execute(sa.select(m.Suppression.address, m.Suppression.account_id))] == [
            ("bad@dest.org", acc.id)]


def test_lookup_skips_a_lapsed_entry_unless_asked(store):
    acc = store.directory.create_account("acme")
    supp = Suppressions(store.sessions, store.reads)
    supp.add(acc.id, [NewSuppression("old@dest.org", "manual", expires_at=T0 - dt.timedelta(seconds=1))], T0)
    assert supp.lookup(acc.id, "OLD@dest.org", T0) is None
    assert supp.lookup(acc.id, "OLD@dest.org", T0, include_expired=True).address == "old@dest.org"


async def test_the_policy_provides_its_book_and_the_policy_set_exposes_it(store, services):
    acc = store.directory.create_account("acme")
    policy = SuppressionPolicy({"cache_ttl": 0}, services)
    book: SuppressionBook = policy.suppression_book
    assert isinstance(book, StoredBook)
    assert PolicySet([("limits", object()), ("suppression", policy)]).suppression_book is book
    assert PolicySet([("limits", object())]).suppression_book is None

    assert await book.add(acc.id, [NewSuppression("a@dest.org", "complaint"), NewSuppression("b@dest.org")]) == (2, 0)
    assert await book.add(acc.id, [NewSuppression("a@dest.org", "unsubscribe")]) == (0, 1)
    await book.record(acc.id, "C@dest.org", "hard_bounce", "5.1.1")
    assert [(e.address, e.reason) for e in await book.list(acc.id)] == [  # newest first (one clock: by id)
        ("c@dest.org", "hard_bounce"), ("b@dest.org", "manual"), ("a@dest.org", "unsubscribe")]
    assert (await book.get(acc.id, "A@DEST.ORG")).reason == "unsubscribe"
    assert await book.remove(acc.id, ["a@dest.org"]) == 1
    with pytest.raises(NotFound, match="a@dest.org is not on the suppression list"):
        await book.remove(acc.id, ["b@dest.org", "a@dest.org"])  # all or none: b stays
    assert await book.get(acc.id, "b@dest.org") is not None and await book.get(acc.id, "a@dest.org") is None
