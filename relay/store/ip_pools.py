"""IP pools and who may use them: the operator's (open to every account, or restricted to the
accounts granted them) and each account's own (used by that account alone).

The rules run inside the caller's transaction (:func:`claim` for an upstream, :func:`check_usable`
for an alias), so a check and the change it allows commit together. A refusal never says which
account owns a pool.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from relay.store import aware, utcnow
from relay.store import models as m
from relay.store.records import PoolRec
from relay.vocab import OPERATOR_POOLS, Conflict, Forbidden, NotFound

NOT_AVAILABLE = "IP pool {!r} is not available to this account"


def _row(s: Session, name: str, *, create_for: str | None = None) -> m.IpPool:
    """The pool, created (owned by ``create_for``; None: the operator) the first time it is named
    (its age drives warm-up)."""
    row = s.get(m.IpPool, name)
    if row is None:
        row = m.IpPool(name=name, created_at=utcnow(), account_id=create_for, restricted=False)
        s.add(row)
        s.flush()
    return row


def _rec(s: Session, row: m.IpPool) -> PoolRec:
    granted = frozenset(s.scalars(sa.select(m.IpPoolGrant.account_id).where(m.IpPoolGrant.ip_pool == row.name)))
    return PoolRec(row.name, row.account_id, bool(row.restricted), granted, aware(row.created_at))


def claim(s: Session, name: str, owner: str | None) -> None:
    """An upstream of ``owner`` (an account id; None: the operator) goes into pool ``name``: a new
    name becomes ``owner``'s pool; an existing pool must be ``owner``'s. Names in OPERATOR_POOLS are
    the operator's only."""
    if owner is not None and name in OPERATOR_POOLS:
        raise Forbidden(f"IP pool {name!r} is reserved for the operator: choose another name")
    row = _row(s, name, create_for=owner)
    if row.account_id == owner:
        return
    if owner is None:
        raise Forbidden(f"IP pool {name!r} belongs to an account: add the upstream with --account")
    raise Forbidden(NOT_AVAILABLE.format(name))


def check_usable(s: Session, name: str, account_id: str) -> None:
    """An alias of ``account_id`` may send through pool ``name``: its own pool, or an operator pool
    open or granted to it. A pool nobody named yet becomes an (open) operator pool."""
    row = _row(s, name)
    if not _rec(s, row).allows(account_id):
        raise Forbidden(NOT_AVAILABLE.format(name))


class Pools:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    def get(self, name: str) -> PoolRec | None:
        with self._reads() as s:
            row = s.get(m.IpPool, name)
            return None if row is None else _rec(s, row)

    def list(self) -> list[PoolRec]:
        with self._reads() as s:
            grants: dict[str, set[str]] = {}
            for pool, account in s.execute(sa.select(m.IpPoolGrant.ip_pool, m.IpPoolGrant.account_id)):
                grants.setdefault(pool, set()).add(account)
            return [PoolRec(r.name, r.account_id, bool(r.restricted), frozenset(grants.get(r.name, ())),
                            aware(r.created_at))
                    for r in s.scalars(sa.select(m.IpPool).order_by(m.IpPool.name))]

    def _operator_pool(self, s: Session, name: str) -> m.IpPool:
        row = _row(s, name)
        if row.account_id is not None:
            raise Conflict(f"IP pool {name!r} belongs to an account: an account's pool is always its own alone")
        return row

    def restrict(self, name: str, restricted: bool = True) -> PoolRec:
        """Only granted accounts may use operator pool ``name`` (or, ``restricted=False``, every account)."""
        with self._sessions.begin() as s:
            row = self._operator_pool(s, name)
            row.restricted = restricted
            s.flush()
            return _rec(s, row)

    def grant(self, name: str, account_id: str) -> PoolRec:
        with self._sessions.begin() as s:
            row = self._operator_pool(s, name)
            if s.get(m.IpPoolGrant, (name, account_id)) is None:
                s.add(m.IpPoolGrant(ip_pool=name, account_id=account_id, created_at=utcnow()))
                s.flush()
            return _rec(s, row)

    def revoke(self, name: str, account_id: str) -> PoolRec:
        with self._sessions.begin() as s:
            row = s.get(m.IpPool, name)
            grant = s.get(m.IpPoolGrant, (name, account_id))
            if row is None or grant is None:
                raise NotFound(f"IP pool {name!r} has no grant for that account")
            s.delete(grant)
            s.flush()
            return _rec(s, row)
