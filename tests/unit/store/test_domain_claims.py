"""relay.store: domain claims (migration 0005) on SQLite and PostgreSQL. Several accounts claim one
name; at most one claim is ever verified, which the database itself holds."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError

from relay.store import MIGRATIONS, Store, utcnow
from relay.store import models as m
from relay.vocab import Conflict, Invalid

KEYS = [("sel-rsa", "rsa", "enc", "v=DKIM1; k=rsa; p=A")]


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.migrate()
    for name in ("acme", "mallory"):
        s.directory.create_account(name)
    yield s
    s.close()


def test_claims_and_the_first_verified_owner(store):
    d = store.directory
    mine = d.add_domain("mallory", "example.com", "tok-m", KEYS)  # first, unverified
    acme = d.add_domain("acme", "example.com", "tok-a", KEYS)
    assert mine.id != acme.id and d.find_domain("example.com") is None
    with pytest.raises(Conflict, match="exists already"):
        d.add_domain("acme", "example.com", "tok-2", KEYS)
    with pytest.raises(Invalid, match=r"claimed by several accounts \(acme, mallory\)"):
        d.get_domain("example.com")
    assert d.get_domain("example.com", "mallory").id == mine.id

    assert d.mark_domain_verified(acme.id).verified is True
    with pytest.raises(Conflict, match="^domain is already verified by another account$"):
        d.mark_domain_verified(mine.id)
    assert d.find_domain("example.com").id == acme.id == d.get_domain("example.com").id
    assert d.get_domain_by_id(mine.id).verified is False
    d.create_account("carol")
    with pytest.raises(Conflict, match="^domain is already verified by another account$"):
        d.add_domain("carol", "example.com", "tok-c", KEYS)
    assert len(d.list_domains()) == 2


def test_the_database_refuses_a_second_verified_claim(store):
    """What makes concurrent verifications safe on every node: the partial unique index."""
    d = store.directory
    a = d.add_domain("acme", "example.com", "tok-a", KEYS)
    b = d.add_domain("mallory", "example.com", "tok-m", KEYS)
    with store.sessions.begin() as s:
        s.execute(sa.update(m.Domain).where(m.Domain.id == a.id).values(verified_at=utcnow()))
    with pytest.raises(IntegrityError), store.sessions.begin() as s:
        s.execute(sa.update(m.Domain).where(m.Domain.id == b.id).values(verified_at=utcnow()))
    assert d.find_domain("example.com").id == a.id


def test_migration_0005_keeps_domains_keys_and_links(db_url):
    store = Store(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as c:
        cfg.attributes["connection"] = c
        command.upgrade(cfg, "0003")
    with store.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO accounts (id, name, created_at) VALUES ('acc_1', 'acme', CURRENT_TIMESTAMP)")
        c.exec_driver_sql("INSERT INTO domains (id, account_id, name, verification_token, verified_at, created_at) "
                          "VALUES ('dom_1', 'acc_1', 'example.com', 'tok', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
        c.exec_driver_sql("INSERT INTO dkim_keys (id, domain_id, selector, algorithm, private_key_enc, public_txt, "
                          "active, created_at, status) VALUES ('dkim_1', 'dom_1', 's1', 'rsa', 'enc', 'txt', TRUE, "
                          "CURRENT_TIMESTAMP, 'active')")
        c.exec_driver_sql("INSERT INTO ip_pools (name, created_at) VALUES ('default', CURRENT_TIMESTAMP)")
        c.exec_driver_sql("INSERT INTO aliases (id, account_id, email, ip_pool, is_default, verification_token, "
                          "created_at) VALUES ('ali_1', 'acc_1', 'app@example.com', 'default', FALSE, 'link', "
                          "CURRENT_TIMESTAMP)")
    store.migrate()
    rec = store.directory.find_domain("example.com")
    assert rec is not None and [k.id for k in rec.keys] == ["dkim_1"]  # the table rebuild kept the keys
    found = store.directory.alias_by_token("link")
    assert found is not None and found[1] is not None  # an old link counts from the alias's creation
    store.directory.create_account("mallory")
    with pytest.raises(Conflict):
        store.directory.add_domain("mallory", "example.com", "tok-m", KEYS)
    store.close()
