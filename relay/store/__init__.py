"""The durable store: engine set-up, versioned migrations, and the two halves of the data.

``Store.directory`` holds who may send what (accounts, keys, domains, aliases, pools, upstreams);
``Store.queue`` holds the mail (messages, recipients, events). Both are synchronous
SQLAlchemy code; the async side calls them through :class:`relay.store.runner.DbRunner`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
import logging
import secrets
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from relay.ops.files import private_dir, private_file
from relay.vocab import new_id, utcnow  # noqa: F401  (re-exported: the store's callers take time and ids from here too)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_MIGRATION_LOCK = 0x52454C4159  # "RELAY": one node migrates at a time


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def make_engine(url: str) -> Engine:
    """An engine tuned for the store's dialect: SQLite in WAL with synchronous=FULL."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_dir(Path(path).parent)
            for suffix in ("", "-wal", "-shm"):
                private_file(Path(path + suffix))
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  pool_size=8, max_overflow=8)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # Let SQLAlchemy's own BEGIN work; pysqlite's implicit transactions break savepoints.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # Writers take the write lock up front (no deadlock-prone lock upgrades); readers never
            # wait for it: in WAL they see the last commit.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("relay_read") else "BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _alembic_config(output: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine, target: str = "head") -> None:
    """Create or upgrade the schema to ``target`` (the newest version by default; an older revision
    than the store's downgrades to it), Alembic run in-process, one node at a time on PostgreSQL."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        from alembic.runtime.migration import MigrationContext

        current = MigrationContext.configure(conn).get_current_revision()
        script = ScriptDirectory.from_config(cfg)
        wanted = script.get_revision(target)
        if current is not None and wanted is not None and \
                wanted.revision in {r.revision for r in script.iterate_revisions(current, "base")} and \
                wanted.revision != current:
            command.downgrade(cfg, wanted.revision)
        else:
            command.upgrade(cfg, target)


def migration_sql(url: str, start: str | None, target: str = "head") -> str:
    """The SQL that takes a store from ``start`` (None: empty) to ``target``, without running it
    (Alembic's offline mode), for whoever applies schema changes by hand."""
    import io

    from alembic import command

    out = io.StringIO()
    cfg = _alembic_config(out)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, f"{start}:{target}" if start else target, sql=True)
    return out.getvalue()


def revisions(engine: Engine) -> tuple[str | None, str]:
    """(the store's schema revision, None for an empty store; the newest this code knows)."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, str(head)


def node_id(data_dir: Path) -> str:
    """A stable id per data directory: after a restart this node recovers its own leases at once."""
    path = data_dir / "node.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import socket

        private_dir(data_dir)
        value = f"node_{socket.gethostname()}_{secrets.token_hex(4)}"
        path.write_text(value + "\n")
        return value


class Store:
    def __init__(self, url: str, *, node_id: str | None = None) -> None:
        from relay.store.directory import Directory
        from relay.store.ip_pools import Pools
        from relay.store.queue import Queue
        from relay.store.users import UserStore
        from relay.store.webhooks import Outbox, WebhookStore

        self.url = url
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self.reads: sessionmaker[Session] = sessionmaker(self.engine.execution_options(relay_read=True),
                                                         expire_on_commit=False)
        self.node_id = node_id or new_id("node")
        self.directory = Directory(self.sessions, self.reads)
        self.ip_pools = Pools(self.sessions, self.reads)
        self.users = UserStore(self.sessions, self.reads)
        self.webhook_outbox = Outbox(WebhookStore(self.sessions, self.reads))
        self.queue = Queue(self.sessions, self.reads, on_outcomes=self.webhook_outbox.on_outcomes)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self, target: str = "head") -> None:
        migrate(self.engine, target)

    def revisions(self) -> tuple[str | None, str]:
        return revisions(self.engine)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store(dialect={self.dialect!r})"
