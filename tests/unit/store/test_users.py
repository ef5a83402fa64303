"""relay.store.users on both stores: one email per gateway, sessions and links deleted with their user,
and an account's removal taking its users and sessions with it (the foreign keys cascade)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from relay.store import Store, utcnow
from relay.store import models as m
from relay.vocab import Conflict, Expired, NotFound


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.migrate()
    s.directory.create_account("acme")
    yield s
    s.close()


def count(store: Store, model) -> int:
    with store.sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def test_one_email_per_gateway_and_no_hash_in_a_repr(store):
    store.directory.create_account("globex")
    now = utcnow()
    rec = store.users.create("acme", "a@acme.test", "owner", "$argon2id$v=19$secret-hash", now)
    assert "argon2" not in repr(rec) and rec.has_password
    with pytest.raises(Conflict):
        store.users.create("globex", "a@acme.test", "member", None, now)
    with pytest.raises(NotFound):
        store.users.create("nope", "b@acme.test", "member", None, now)
    assert store.users.find_by_email("a@acme.test").account_name == "acme"
    with pytest.raises(NotFound):
        store.users.get(rec.id, store.directory.get_account("globex").id)  # another account's: not found


def test_links_are_used_once_and_expire(store):
    now = utcnow()
    rec = store.users.create("acme", "a@acme.test", "admin", None, now)
    store.users.reset(rec.id, "h1", now + dt.timedelta(hours=1), clear_password=False)
    assert store.users.consume_link("h1", "$argon2id$x", now) == rec.id
    with pytest.raises(NotFound):
        store.users.consume_link("h1", "$argon2id$y", now)
    store.users.reset(rec.id, "h2", now + dt.timedelta(hours=1), clear_password=True)
    assert store.users.get(rec.id).password_hash is None
    with pytest.raises(Expired):
        store.users.consume_link("h2", "$argon2id$z", now + dt.timedelta(hours=2))
    assert count(store, m.PasswordLink) == 0


def test_removing_the_account_removes_its_users_sessions_and_links(store):
    now = utcnow()
    rec = store.users.create("acme", "a@acme.test", "owner", None, now)
    store.users.reset(rec.id, "h1", now + dt.timedelta(hours=1), clear_password=False)  # (ends sessions)
    store.users.add_session("s1", rec.id, now, now + dt.timedelta(hours=1))
    store.users.add_session("s2", rec.id, now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
    assert store.users.session_user("s1")[0].id == rec.id
    assert store.users.prune(now) == 1  # the expired session
    store.directory.remove_account("acme")
    assert (count(store, m.User), count(store, m.UserSession), count(store, m.PasswordLink)) == (0, 0, 0)
    assert store.users.session_user("s1") is None
