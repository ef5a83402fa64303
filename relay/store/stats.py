"""Queue summary for monitoring (``/metrics``, ``/readyz``): one short read, never on the hot path."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from relay.store import Store, aware
from relay.store import models as m
from relay.store.queue import PENDING


@dataclass(frozen=True)
class QueueStats:
    depth: dict[str, int] = field(default_factory=dict)  # pending state -> recipients (every PENDING state)
    oldest_created_at: dt.datetime | None = None  # the oldest message with a pending recipient


def queue_stats(store: Store) -> QueueStats:
    """Recipients per pending state and the oldest pending message (the ``ix_recipients_due`` index
    serves the count; finished recipients are never scanned)."""
    with store.reads() as s:
        counts = dict(s.execute(sa.select(m.Recipient.state, sa.func.count())
                                .where(m.Recipient.state.in_(PENDING)).group_by(m.Recipient.state)).all())
        oldest = s.scalar(sa.select(sa.func.min(m.Message.created_at)).where(m.Message.id.in_(
            sa.select(m.Recipient.message_id).where(m.Recipient.state.in_(PENDING)))))
    return QueueStats({state: int(counts.get(state, 0)) for state in PENDING}, aware(oldest))


def ip_pools_in_use(store: Store) -> set[str]:
    """IP pools that verified aliases route to (what ``/readyz`` expects an upstream for)."""
    with store.reads() as s:
        return set(s.scalars(sa.select(m.Alias.ip_pool).where(m.Alias.verified_at.is_not(None)).distinct()))
