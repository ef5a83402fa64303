"""The queue's scans use indexes on PostgreSQL, with fresh (never analyzed) statistics and after
ANALYZE: the claim of due recipients, the recovery of stale ones, lease renewal, the per-recipient
updates (dot marker, outcome) and a pool's parked mail; the events' retention batch too once the
table is analyzed (autovacuum does it; with fresh statistics PostgreSQL may scan it: an hourly job). A deep store (many
final recipients, a backlog parked on a down pool) must not turn any of them into a sequential scan
of recipients, messages or events."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from relay.store import Store
from relay.store import queue as q

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
TABLES = ("recipients", "messages", "events")


def seed(store: Store, n: int) -> None:
    """``n`` messages of one recipient: most delivered, a backlog parked on pool "down", a few due."""
    with store.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO accounts (id, name, created_at) VALUES ('acc_1', 'acme', now())")
        c.exec_driver_sql(
            "INSERT INTO messages (id, account_id, ip_pool, mail_from, body, size, source, sandbox, created_at, "
            "expires_at) SELECT 'msg_' || g, 'acc_1', CASE WHEN mod(g, 10) = 0 THEN 'down' ELSE 'default' END, "
            f"'a@x.test', 'x'::bytea, 1, 'smtp', false, now(), now() + interval '5 days' FROM generate_series(1, {n}) g")
        c.exec_driver_sql(
            "INSERT INTO recipients (message_id, address, state, attempts, next_attempt_at, updated_at) "
            "SELECT 'msg_' || g, 'r' || g || '@dest.test', CASE WHEN mod(g, 10) = 0 THEN 'deferred' "
            "WHEN mod(g, 97) = 0 THEN 'queued' ELSE 'delivered' END, 0, "
            "CASE WHEN mod(g, 10) = 0 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END, now() "
            f"FROM generate_series(1, {n}) g")
        c.exec_driver_sql(
            "INSERT INTO events (message_id, recipient, type, at) SELECT 'msg_' || g, 'r' || g || '@dest.test', "
            f"'delivered', now() - (g || ' seconds')::interval FROM generate_series(1, {n}) g")


def literal(stmt: sa.ClauseElement) -> str:
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def hot(sql: str, **values: str) -> str:
    return re.sub(r"%\((\w+)\)s", lambda mm: values[mm.group(1)], sql)


def scans(plan: dict) -> list[tuple[str, str]]:
    """(node type, relation) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    out = []
    node = plan
    stack = [node]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            out.append((node["Node Type"], node["Relation Name"]))
        stack.extend(node.get("Plans", []))
    return out


def plans(store: Store) -> dict[str, list[tuple[str, str]]]:
    statements = {
        "claim": literal(q.due_query(NOW, 500)),
        "stale": literal(q.stale_query(NOW)),
        "renew": literal(q.renew_statement("node_a", NOW)),
        "held": literal(q.held_statement("down", NOW)),
        "prune": literal(q.old_events_query(NOW - dt.timedelta(days=30), 5000)),
    }
    hot_sql = store.queue._sql  # the hot statements, as the queue runs them
    mark, outcome = hot_sql.mark.sql, hot_sql.outcome.sql
    statements["mark"] = hot(mark, now="now()", up="'up'", mid="'msg_5'", addr="'r5@dest.test'")
    statements["outcome"] = hot(outcome, st="'delivered'", code="250", reply="'ok'", up="'up'", nxt="now()",
                                inc="1", now="now()", mid="'msg_5'", addr="'r5@dest.test'")
    out = {}
    with store.engine.begin() as c:
        for name, text in statements.items():
            row = c.exec_driver_sql("EXPLAIN (FORMAT JSON) " + text).scalar()
            doc = row if isinstance(row, list) else json.loads(row)
            out[name] = scans(doc[0]["Plan"])
        c.rollback()
    return out


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh-statistics", "analyzed"])
def test_the_queue_scans_use_indexes_on_postgresql(pg_url, analyzed):
    store = Store(pg_url)
    try:
        store.migrate()
        with store.engine.begin() as c:
            for table in TABLES:
                c.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        seed(store, 60_000)
        if analyzed:
            with store.engine.begin() as c:
                for table in TABLES:
                    c.exec_driver_sql(f"ANALYZE {table}")
        found = plans(store)
        if not analyzed:  # the hourly retention batch may scan an unanalyzed events table; the hot scans never
            found.pop("prune")
        seq = {name: [s for s in nodes if s[0] == "Seq Scan" and s[1] in TABLES] for name, nodes in found.items()}
        assert not any(seq.values()), json.dumps(found, indent=1)
    finally:
        store.close()
