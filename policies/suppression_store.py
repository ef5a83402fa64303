"""The suppression policy's storage: the accounts' lists in the ``suppressions`` table.

Addresses are matched case-insensitively (``lower(address)``, indexed per account); entries whose
``expires_at`` has passed no longer suppress. The table is created by the core migrations (0001,
0002) and declared with the store's other tables (``relay.store.models.Suppression``), as the
quota tables are; the policy owns every query on it. Synchronous SQLAlchemy code: the policy's
:class:`policies.suppression.StoredBook` runs it in the gateway's threads.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from policies.spec import NewSuppression, SuppressionEntry
from relay.store import aware, utcnow
from relay.store import models as m
from relay.vocab import NotFound

_S = m.Suppression
__all__ = ["NewSuppression", "SuppressionEntry", "Suppressions"]


def _rec(r: m.Suppression) -> SuppressionEntry:
    return SuppressionEntry(r.address.lower(), r.reason, r.detail, aware(r.expires_at), aware(r.created_at))


class Suppressions:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    def lookup(self, account_id: str, address: str, now: dt.datetime | None = None, *,
               include_expired: bool = False) -> SuppressionEntry | None:
        """The active entry for ``address`` (any case; a lapsed one too with ``include_expired``), or None."""
        now = now or utcnow()
        with self._reads() as s:
            rows = s.scalars(sa.select(_S).where(_S.account_id == account_id,
                                                 sa.func.lower(_S.address) == address.lower())).all()
            recs = [_rec(r) for r in rows]
        return next((r for r in recs if include_expired or r.active(now)), None)

    def add(self, account_id: str, entries: Iterable[NewSuppression], now: dt.datetime | None = None) -> tuple[int, int]:
        """Insert or update entries (one transaction). Returns (added, updated)."""
        now = now or utcnow()
        entries = list(entries)
        added = updated = 0
        with self._sessions.begin() as s:
            existing: dict[str, m.Suppression] = {}
            if len(entries) > 20:
                existing = {r.address.lower(): r for r in s.scalars(sa.select(_S).where(_S.account_id == account_id))}
            else:
                wanted = {e.address.lower() for e in entries}
                if wanted:
                    existing = {r.address.lower(): r for r in s.scalars(
                        sa.select(_S).where(_S.account_id == account_id, sa.func.lower(_S.address).in_(wanted)))}
            for e in entries:
                key = e.address.lower()
                row = existing.get(key)
                if row is None:
                    row = m.Suppression(account_id=account_id, address=key, reason=e.reason, detail=e.detail,
                                        expires_at=e.expires_at, created_at=now)
                    s.add(row)
                    existing[key] = row
                    added += 1
                else:
                    row.reason, row.detail, row.expires_at = e.reason, e.detail, e.expires_at
                    updated += 1
        return added, updated

    def remove(self, account_id: str, addresses: Sequence[str]) -> int:
        """Delete entries; NotFound names the first address that is not listed."""
        with self._sessions.begin() as s:
            total = 0
            for a in addresses:
                n = s.execute(sa.delete(_S).where(_S.account_id == account_id, sa.func.lower(_S.address) == a.lower()),
                              execution_options={"synchronize_session": False}).rowcount
                if not n:
                    raise NotFound(f"{a} is not on the suppression list")
                total += n
            return total

    def list(self, account_id: str, *, reason: str | None = None, include_expired: bool = False,
             now: dt.datetime | None = None, limit: int | None = None) -> list[SuppressionEntry]:
        now = now or utcnow()
        with self._reads() as s:
            q = sa.select(_S).where(_S.account_id == account_id).order_by(_S.created_at.desc(), _S.id.desc())
            if reason:
                q = q.where(_S.reason == reason)
            if not include_expired:
                q = q.where(sa.or_(_S.expires_at.is_(None), _S.expires_at > now))
            if limit:
                q = q.limit(limit)
            return [_rec(r) for r in s.scalars(q)]

    def record(self, account_id: str, address: str, reason: str, detail: str | None,
               now: dt.datetime | None = None) -> None:
        """Suppress ``address`` from now on, without expiry (one entry whatever its case): the
        automatic suppression of a hard bounce or a complaint."""
        now = now or utcnow()
        address = address.lower()
        where = (_S.account_id == account_id, sa.func.lower(_S.address) == address)
        with self._sessions.begin() as s:
            updated = s.execute(sa.update(_S).where(*where).values(reason=reason, detail=detail, expires_at=None),
                                execution_options={"synchronize_session": False}).rowcount
            if updated == 0:
                s.execute(sa.insert(_S).values(account_id=account_id, address=address, reason=reason, detail=detail,
                                               created_at=now))
