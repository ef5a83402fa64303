"""Idempotency keys in the database: one owner per (account, key) for 24 hours, across nodes.

The owner inserts its claim just before committing the message (the primary key settles races
between processes and nodes); it deletes the claim if that commit fails. A claim whose message is
in ``messages`` is settled: a duplicate gets the original result back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from relay.store import aware, utcnow
from relay.store import models as m

_I = m.IdempotencyRecord


@dataclass(frozen=True)
class IdempotencyRec:
    account_id: str
    key: str
    message_id: str
    provider: str
    queued: bool
    created_at: dt.datetime
    committed: bool  # the message is in the store: the original request succeeded


class IdempotencyStore:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    @staticmethod
    def _rec(s: Session, row: m.IdempotencyRecord) -> IdempotencyRec:
        committed = s.scalar(sa.select(m.Message.id).where(m.Message.id == row.message_id)) is not None
        return IdempotencyRec(row.account_id, row.key, row.message_id, row.provider, row.queued,
                              aware(row.created_at), committed)

    def claim(self, account_id: str, key: str, message_id: str, provider: str, queued: bool,
              now: dt.datetime, window: dt.timedelta, *, abandoned: str | None = None) -> IdempotencyRec | None:
        """Take the key for ``message_id`` (None), or return the live claim of an earlier request.
        ``abandoned``: the message id of a claim whose owner died before its commit: taken over."""
        for _ in range(3):
            try:
                with self._sessions.begin() as s:
                    row = s.get(_I, (account_id, key))
                    if row is not None:
                        if aware(row.expires_at) > now and row.message_id != abandoned:
                            return self._rec(s, row)
                        s.delete(row)
                        s.flush()
                    s.add(_I(account_id=account_id, key=key, message_id=message_id, provider=provider,
                             queued=queued, created_at=now, expires_at=now + window))
                return None
            except IntegrityError:  # another node inserted it between our read and our insert
                continue
        rec = self.get(account_id, key, now)
        if rec is None:
            raise RuntimeError("idempotency key could not be claimed")
        return rec

    def get(self, account_id: str, key: str, now: dt.datetime | None = None) -> IdempotencyRec | None:
        now = now or utcnow()
        with self._reads() as s:
            row = s.get(_I, (account_id, key))
            if row is None or aware(row.expires_at) <= now:
                return None
            return self._rec(s, row)

    def release(self, account_id: str, key: str, message_id: str) -> None:
        """The owner's commit failed: the key is free again."""
        with self._sessions.begin() as s:
            s.execute(sa.delete(_I).where(_I.account_id == account_id, _I.key == key, _I.message_id == message_id),
                      execution_options={"synchronize_session": False})

    def prune(self, now: dt.datetime | None = None) -> int:
        with self._sessions.begin() as s:
            return s.execute(sa.delete(_I).where(_I.expires_at <= (now or utcnow())),
                             execution_options={"synchronize_session": False}).rowcount
