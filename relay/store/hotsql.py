"""Hot-path statements executed on the DBAPI cursor of an open SQLAlchemy transaction.

The group commit writes a handful of fixed statements many times a second. Through SQLAlchemy
Core each ``execute`` builds a cache key, looks up the compiled form and runs every parameter
through its type: about two thirds of the store thread's CPU per message. Here each statement is
written once, in the dialect's parameter style, and its parameters go through the column types'
own bind processors (datetimes on SQLite, JSON, booleans) only where a type has one, so the stored
values are exactly what Core would store. The transaction stays SQLAlchemy's (``engine.begin()``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


class HotStatement:
    """One statement with ``:name`` parameters; ``types`` gives the column type of each name."""

    __slots__ = ("sql", "_procs")

    def __init__(self, dialect: Dialect, sql: str, types: Mapping[str, sa.types.TypeEngine]) -> None:
        names = set(_PARAM.findall(sql))
        if names - set(types):
            raise ValueError(f"no type for {sorted(names - set(types))} in {sql!r}")
        if dialect.paramstyle in ("pyformat", "format"):
            sql = _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        elif dialect.paramstyle not in ("named", "qmark"):  # sqlite3 takes :name whatever the dialect says
            raise ValueError(f"unsupported parameter style {dialect.paramstyle!r}")
        self.sql = sql
        procs: list[tuple[str, Callable[[Any], Any]]] = []
        for name in sorted(names):
            proc = types[name].dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                procs.append((name, proc))
        self._procs = tuple(procs)

    def run(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """executemany inside ``conn``'s transaction (the rows' dicts are converted in place)."""
        if not rows:
            return
        for name, proc in self._procs:
            done: dict[Any, Any] = {}  # a batch repeats its values (one "now", None): convert each once
            for row in rows:
                value = row[name]
                key = (value.__class__, value)  # (True and 1 are equal keys, and JSON tells them apart)
                try:
                    row[name] = done[key]
                except KeyError:
                    row[name] = done[key] = proc(value)
                except TypeError:  # unhashable (a JSON list or dict)
                    row[name] = proc(value)
        dialect = conn.dialect
        cur = conn.connection.cursor()
        try:
            cur.executemany(self.sql, rows)
        except dialect.loaded_dbapi.Error as exc:  # as Core raises it: IntegrityError, OperationalError...
            if dialect.is_disconnect(exc, conn.connection, cur):
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(self.sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                                             dialect=dialect, ismulti=True) from exc
        finally:
            cur.close()


def insert(dialect: Dialect, table: sa.Table, columns: Sequence[str]) -> HotStatement:
    """``INSERT INTO table (columns) VALUES (:column, ...)``."""
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    return HotStatement(dialect, sql, {c: table.c[c].type for c in columns})
