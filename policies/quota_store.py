"""Quota counters and limits in the database: exact across processes and nodes.

Every check-and-count is ONE transaction of conditional upserts, so two nodes on one PostgreSQL (or
several worker processes on one SQLite file) can never both take the last unit:

- daily cap: ``INSERT INTO quota_usage (target, day, count) VALUES (t, d, n) ON CONFLICT (target, day)
  DO UPDATE SET count = count + n WHERE count + n <= cap RETURNING target``;
- rate (token bucket): ``INSERT INTO quota_buckets ... ON CONFLICT (target) DO UPDATE SET
  tokens = min(cap, tokens + elapsed * refill) - n, refilled_at = now WHERE min(cap, tokens + elapsed *
  refill) >= n RETURNING target``.

A statement that returns no row means "over the limit": the transaction rolls back, so a
submission charged against several targets (account, key, alias, pool...) is counted against all of
them or none. PostgreSQL re-evaluates the WHERE against the row as committed by a concurrent
transaction (READ COMMITTED), SQLite serializes writers; rows are locked in one global order
(sorted by target), so concurrent charges cannot deadlock. Refunds add back what was taken.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from policies.quota_rules import LimitSpec, Rate, UNLIMITED
from relay.vocab import NotFound
from relay.store import aware, utcnow
from relay.store import models as m

_U = m.QuotaUsage.__table__
_B = m.QuotaBucket.__table__
_L = m.QuotaLimit.__table__


@dataclass(frozen=True)
class Charge:
    """``n`` units against one target: its daily cap on ``day`` and/or its rate bucket."""

    target: str
    n: int = 1
    day: dt.date | None = None
    daily_cap: int | None = None
    rate: Rate | None = None


@dataclass(frozen=True)
class LimitRec:
    target: str
    kind: str
    account_id: str | None
    subject: str
    ip_pool: str | None
    spec: LimitSpec
    updated_at: dt.datetime


@dataclass(frozen=True)
class Usage:
    target: str
    used_today: int
    tokens: float | None  # None: no bucket yet (full)


class _Over(Exception):
    def __init__(self, target: str, what: str) -> None:
        self.target, self.what = target, what


def _epoch(now: dt.datetime) -> float:
    return now.timestamp()


def _spec(r: m.QuotaLimit) -> LimitSpec:
    rate: Rate | int | None = None
    if r.rate_count is not None:
        rate = UNLIMITED if r.rate_count == UNLIMITED else Rate(r.rate_count, r.rate_per or 1)
    warmup = tuple((int(d), int(c)) for d, c in r.warmup) if r.warmup else None
    return LimitSpec(rate, r.daily, warmup, r.warmup_start)


def _rec(r: m.QuotaLimit) -> LimitRec:
    return LimitRec(r.target, r.kind, r.account_id, r.subject, r.ip_pool, _spec(r), aware(r.updated_at))


class QuotaStore:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    # -- dialect helpers ------------------------------------------------------------------------
    @staticmethod
    def _insert(s: Session, table: sa.Table):
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @staticmethod
    def _least(s: Session, a, b):
        return sa.func.least(a, b) if s.get_bind().dialect.name == "postgresql" else sa.func.min(a, b)

    @staticmethod
    def _greatest(s: Session, a, b):
        return sa.func.greatest(a, b) if s.get_bind().dialect.name == "postgresql" else sa.func.max(a, b)

    def _available(self, s: Session, rate: Rate, now_ts: float):
        """Tokens in the bucket row now (SQL expression over the existing row)."""
        elapsed = self._greatest(s, sa.literal(now_ts, sa.Float) - _B.c.refilled_at, sa.literal(0.0, sa.Float))
        return self._least(s, _B.c.tokens + elapsed * rate.refill, sa.literal(float(rate.count), sa.Float))

    # -- the hot path -----------------------------------------------------------------------------
    def reserve(self, charges: Sequence[Charge], now: dt.datetime | None = None) -> tuple[str, str] | None:
        """Count every charge, or none. Returns None when all fit, else (target, "daily"|"rate")."""
        now = now or utcnow()
        for c in charges:  # what can never fit needs no transaction
            if c.daily_cap is not None and c.n > c.daily_cap:
                return c.target, "daily"
            if c.rate is not None and c.n > c.rate.count:
                return c.target, "rate"
        try:
            with self._sessions.begin() as s:
                for c in sorted(charges, key=lambda c: c.target):
                    self._take(s, c, _epoch(now))
        except _Over as over:
            return over.target, over.what
        return None

    def _take(self, s: Session, c: Charge, now_ts: float) -> None:
        conn = s.connection()
        if c.daily_cap is not None and c.day is not None:
            stmt = (self._insert(s, _U).values(target=c.target, day=c.day, count=c.n)
                    .on_conflict_do_update(index_elements=[_U.c.target, _U.c.day], set_={"count": _U.c.count + c.n},
                                           where=_U.c.count + c.n <= c.daily_cap)
                    .returning(_U.c.target))
            if conn.execute(stmt).first() is None:
                raise _Over(c.target, "daily")
        if c.rate is not None:
            avail = self._available(s, c.rate, now_ts)
            stmt = (self._insert(s, _B).values(target=c.target, tokens=float(c.rate.count - c.n), refilled_at=now_ts)
                    .on_conflict_do_update(index_elements=[_B.c.target],
                                           set_={"tokens": avail - c.n,
                                                 "refilled_at": self._greatest(s, _B.c.refilled_at,
                                                                               sa.literal(now_ts, sa.Float))},
                                           where=avail >= c.n)
                    .returning(_B.c.target))
            if conn.execute(stmt).first() is None:
                raise _Over(c.target, "rate")

    def refund(self, charges: Sequence[Charge], now: dt.datetime | None = None) -> None:
        """Give back what :meth:`reserve` took (a transaction that did not end in a commit)."""
        if not charges:
            return
        now_ts = _epoch(now or utcnow())
        with self._sessions.begin() as s:
            conn = s.connection()
            for c in sorted(charges, key=lambda c: c.target):
                if c.daily_cap is not None and c.day is not None:
                    conn.execute(sa.update(_U).where(_U.c.target == c.target, _U.c.day == c.day)
                                 .values(count=sa.case((_U.c.count >= c.n, _U.c.count - c.n), else_=0)))
                if c.rate is not None:
                    avail = self._available(s, c.rate, now_ts)
                    conn.execute(sa.update(_B).where(_B.c.target == c.target)
                                 .values(tokens=self._least(s, avail + c.n, sa.literal(float(c.rate.count), sa.Float)),
                                         refilled_at=self._greatest(s, _B.c.refilled_at, sa.literal(now_ts, sa.Float))))

    def check(self, charges: Sequence[Charge], now: dt.datetime | None = None) -> tuple[str, str] | None:
        """What :meth:`reserve` would answer, changing nothing (``relay route explain``)."""
        now_ts = _epoch(now or utcnow())
        with self._reads() as s:
            for c in charges:
                if c.daily_cap is not None and c.day is not None:
                    used = s.scalar(sa.select(_U.c.count).where(_U.c.target == c.target, _U.c.day == c.day)) or 0
                    if used + c.n > c.daily_cap:
                        return c.target, "daily"
                if c.rate is not None:
                    row = s.execute(sa.select(_B.c.tokens, _B.c.refilled_at).where(_B.c.target == c.target)).first()
                    avail = float(c.rate.count) if row is None else \
                        min(float(c.rate.count), row.tokens + max(0.0, now_ts - row.refilled_at) * c.rate.refill)
                    if avail < c.n:
                        return c.target, "rate"
        return None

    def usage(self, targets: Sequence[str], day: dt.date, now: dt.datetime | None = None,
              rates: dict[str, Rate] | None = None) -> dict[str, Usage]:
        """Today's count and the tokens available now (refilled with ``rates[target]``)."""
        now_ts = _epoch(now or utcnow())
        rates = rates or {}
        with self._reads() as s:
            used = dict(s.execute(sa.select(_U.c.target, _U.c.count)
                                  .where(_U.c.target.in_(list(targets)), _U.c.day == day)).all())
            buckets = {r.target: r for r in s.execute(sa.select(_B).where(_B.c.target.in_(list(targets))))}
        out = {}
        for t in targets:
            tokens = None
            b = buckets.get(t)
            if b is not None:
                rate = rates.get(t)
                tokens = b.tokens if rate is None else \
                    min(float(rate.count), b.tokens + max(0.0, now_ts - b.refilled_at) * rate.refill)
            out[t] = Usage(t, used.get(t, 0), tokens)
        return out

    def prune(self, before: dt.date) -> int:
        """Drop daily counters older than ``before``."""
        with self._sessions.begin() as s:
            return s.execute(sa.delete(_U).where(_U.c.day < before)).rowcount

    # -- limits -----------------------------------------------------------------------------------
    def limits(self, targets: Sequence[str]) -> dict[str, LimitRec]:
        with self._reads() as s:
            return {r.target: _rec(r) for r in s.scalars(sa.select(m.QuotaLimit)
                                                          .where(m.QuotaLimit.target.in_(list(targets))))}

    def list_limits(self, account_id: str | None = None) -> list[LimitRec]:
        with self._reads() as s:
            q = sa.select(m.QuotaLimit).order_by(m.QuotaLimit.kind, m.QuotaLimit.target)
            if account_id:
                q = q.where(m.QuotaLimit.account_id == account_id)
            return [_rec(r) for r in s.scalars(q)]

    _UNSET = object()

    def set_limit(self, *, target: str, kind: str, account_id: str | None, subject: str, ip_pool: str | None,
                  rate: object = _UNSET, daily: object = _UNSET, warmup: object = _UNSET,
                  warmup_start: object = _UNSET, now: dt.datetime | None = None) -> LimitRec:
        """Create or update one target's limit; fields left ``_UNSET`` keep their value, None clears."""
        now = now or utcnow()
        with self._sessions.begin() as s:
            row = s.get(m.QuotaLimit, target)
            if row is None:
                row = m.QuotaLimit(target=target, kind=kind, account_id=account_id, subject=subject, ip_pool=ip_pool,
                                   updated_at=now)
                s.add(row)
            if rate is not self._UNSET:
                if rate is None:
                    row.rate_count, row.rate_per = None, None
                elif rate == UNLIMITED:
                    row.rate_count, row.rate_per = UNLIMITED, None
                else:
                    assert isinstance(rate, Rate)
                    row.rate_count, row.rate_per = rate.count, rate.per
            if daily is not self._UNSET:
                row.daily = daily  # type: ignore[assignment]
            if warmup is not self._UNSET:
                row.warmup = [list(p) for p in warmup] if warmup else None  # type: ignore[union-attr]
            if warmup_start is not self._UNSET:
                row.warmup_start = warmup_start  # type: ignore[assignment]
            row.subject = subject
            row.updated_at = now
            s.flush()
            return _rec(row)

    def remove_limit(self, target: str) -> None:
        with self._sessions.begin() as s:
            row = s.get(m.QuotaLimit, target)
            if row is None:
                raise NotFound(f"no quota set for {target}")
            s.delete(row)
            s.execute(sa.delete(_B).where(_B.c.target == target))

    def pool_started(self, pool: str) -> dt.date | None:
        """The UTC day an IP pool was created (day 1 of its warm-up)."""
        with self._reads() as s:
            created = s.scalar(sa.select(m.IpPool.created_at).where(m.IpPool.name == pool))
            return aware(created).astimezone(dt.timezone.utc).date() if created is not None else None
