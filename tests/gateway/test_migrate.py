"""`relay migrate` upgrades a store's schema (and `--check` says whether it must), on SQLite and
PostgreSQL; the shipped Alembic environment also runs by hand (`alembic upgrade head`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from relay.store import MIGRATIONS, Store


def relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def at_revision(url: str, revision: str) -> str:
    """Bring the store at ``url`` to ``revision``; returns the newest revision."""
    store = Store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with store.engine.begin() as c:
            cfg.attributes["connection"] = c
            command.upgrade(cfg, revision)
        return store.revisions()[1]
    finally:
        store.close()


def test_relay_migrate_upgrades_and_check_says_when_to(tmp_path, db_url):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DATA_DIR": str(data), "RELAY_DATABASE_URL": db_url})
    head = at_revision(db_url, "0003")  # a store left at an older schema

    checked = relay(env, "migrate", "--check")
    assert checked.returncode == 1, checked.stderr
    assert checked.stderr.strip().endswith(f"is at revision 0003; the newest is {head}: run `relay migrate`")
    done = relay(env, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"migrated from 0003 to {head}")
    again = relay(env, "migrate", "--json")
    assert again.returncode == 0 and '"current": true' in again.stdout, again.stdout
    assert relay(env, "migrate", "--check").returncode == 0
    back = relay(env, "migrate", "--to", "0005")  # an older revision: downgrade
    assert back.returncode == 0 and back.stdout.strip().endswith(f"migrated from {head} to 0005"), back.stderr
    assert relay(env, "migrate").stdout.strip().endswith(f"migrated from 0005 to {head}")
    bad = relay(env, "migrate", "--to", "nope")
    assert bad.returncode == 2 and "cannot migrate to 'nope'" in bad.stderr, bad.stderr


def test_relay_migrate_sql_prints_what_it_would_run(tmp_path, pg_url):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DATA_DIR": str(data), "RELAY_DATABASE_URL": pg_url})
    at_revision(pg_url, "0003")
    out = relay(env, "migrate", "--sql")
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE ip_pool_grants" in out.stdout and "CREATE INDEX ix_events_at" in out.stdout
    assert "UPDATE alembic_version SET version_num='0006'" in out.stdout
    check = relay(env, "migrate", "--check")
    assert check.returncode == 1  # --sql ran nothing


def test_alembic_by_hand_uses_relays_configuration(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = relay:migrations\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATA_DIR"] = str(data)
    alembic = Path(sys.executable).with_name("alembic")
    proc = subprocess.run([str(alembic), "-c", str(ini), "upgrade", "head"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = Store(f"sqlite:///{data / 'relay.db'}")
    try:
        current, head = store.revisions()
        assert current == head
    finally:
        store.close()
