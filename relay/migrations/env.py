"""Alembic environment. Relay runs it in-process (relay.store.migrate(), ``relay migrate``, ``relay
serve`` at start) with an open connection in ``config.attributes["connection"]``. Run by hand
(``alembic -c <ini with script_location = relay:migrations> upgrade head``), it connects itself: to
the ini's ``sqlalchemy.url`` when set, else to the store of Relay's configuration (RELAY_CONFIG,
RELAY_DATA_DIR, RELAY_DATABASE_URL...), with the same PostgreSQL lock as Relay's own runs.
"""

from alembic import context

from relay.store.models import Base


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


config = context.config
if context.is_offline_mode():  # ``relay migrate --sql``: print the SQL, run nothing
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
elif "connection" in config.attributes:
    _run(config.attributes["connection"])
else:
    from relay.ops.config import load_settings
    from relay.store import _PG_MIGRATION_LOCK, make_engine

    url = config.get_main_option("sqlalchemy.url") or load_settings(None).database_url  # (RELAY_CONFIG)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            _run(conn)
    finally:
        engine.dispose()
