"""Webhooks and their durable delivery queue (one row per event per webhook).

Rows are inserted in the same transaction as the delivery outcomes they report (see
:meth:`WebhookStore.enqueue_outcomes`), so an event is never lost between the outcome's commit and
its notification; they are claimed with leases like recipients, so several processes or nodes can
work the queue.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from relay.vocab import NotFound
from relay.store import aware, new_id, utcnow
from relay.store import models as m

EVENTS = ("delivered", "deferred", "bounced", "suppressed", "complained")
SUBMITTED = ("api", "smtp")  # events are about the account's own mail, not system mail or DSNs
OUTCOME_EVENTS = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced",
                  "expired": "bounced"}
_W = m.Webhook.__table__
_D = m.WebhookDelivery.__table__


@dataclass(frozen=True)
class WebhookRec:
    id: str
    account_id: str
    url: str
    events: tuple[str, ...]
    secret_enc: str = field(repr=False)
    description: str | None
    is_active: bool
    created_at: dt.datetime


@dataclass(frozen=True)
class DeliveryRec:
    id: int
    webhook_id: str
    event_id: str
    event_type: str
    payload: str = field(repr=False)
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None


@dataclass(frozen=True)
class Attempt:
    """A claimed delivery with what is needed to send it."""

    delivery: DeliveryRec
    url: str
    secret_enc: str = field(repr=False)


@dataclass(frozen=True)
class Result:
    delivery_id: int
    delivered: bool
    status: int | None
    error: str | None
    next_attempt_at: dt.datetime | None  # None and not delivered: given up (failed)


def _webhook(r: Any) -> WebhookRec:
    return WebhookRec(r.id, r.account_id, r.url, tuple(r.events or ()), r.secret_enc, r.description, r.is_active,
                      aware(r.created_at))


def _delivery(r: Any) -> DeliveryRec:
    return DeliveryRec(r.id, r.webhook_id, r.event_id, r.event_type, r.payload, r.state, r.attempts,
                       aware(r.next_attempt_at), r.last_status, r.last_error, aware(r.created_at), aware(r.delivered_at))


def event_id() -> str:
    return "evt_" + secrets.token_hex(10)


def payload(event: str, eid: str, at: dt.datetime, data: dict[str, Any]) -> str:
    """The JSON body of one event, exactly as signed and sent."""
    at = at.astimezone(dt.timezone.utc)
    created = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    return json.dumps({"id": eid, "type": event, "created_at": created, "data": data}, separators=(",", ":"),
                      ensure_ascii=False)


Subscriptions = dict[str, list[tuple[str, frozenset[str]]]]  # account id -> [(webhook id, events)]


class WebhookStore:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    # -- webhooks -----------------------------------------------------------------------------
    def create(self, *, webhook_id: str, account_id: str, url: str, events: Sequence[str], secret_enc: str,
               description: str | None) -> WebhookRec:
        with self._sessions.begin() as s:
            row = m.Webhook(id=webhook_id, account_id=account_id, url=url, events=list(events), secret_enc=secret_enc,
                            description=description, is_active=True, created_at=utcnow())
            s.add(row)
            s.flush()
            return _webhook(row)

    def list(self, account_id: str) -> list[WebhookRec]:
        with self._reads() as s:
            return [_webhook(r) for r in s.scalars(sa.select(m.Webhook).where(m.Webhook.account_id == account_id)
                                                   .order_by(m.Webhook.created_at, m.Webhook.id))]

    def get(self, account_id: str, webhook_id: str) -> WebhookRec:
        with self._reads() as s:
            row = s.get(m.Webhook, webhook_id)
            if row is None or row.account_id != account_id:
                raise NotFound(f"no webhook {webhook_id!r}")
            return _webhook(row)

    def delete(self, account_id: str, webhook_id: str) -> None:
        with self._sessions.begin() as s:
            row = s.get(m.Webhook, webhook_id)
            if row is None or row.account_id != account_id:
                raise NotFound(f"no webhook {webhook_id!r}")
            s.execute(sa.delete(m.WebhookDelivery).where(m.WebhookDelivery.webhook_id == webhook_id),
                      execution_options={"synchronize_session": False})
            s.delete(row)

    def subscriptions(self) -> Subscriptions:
        with self._reads() as s:
            out: Subscriptions = {}
            for wid, account_id, events in s.execute(sa.select(_W.c.id, _W.c.account_id, _W.c.events)
                                                     .where(_W.c.is_active.is_(True))):
                out.setdefault(account_id, []).append((wid, frozenset(events or ())))
            return out

    # -- events -------------------------------------------------------------------------------
    @staticmethod
    def _rows(subs: Subscriptions, account_id: str | None, event: str, data: dict[str, Any],
              now: dt.datetime) -> list[dict[str, Any]]:
        rows = []
        for wid, events in subs.get(account_id or "", ()):
            if event in events:
                eid = event_id()
                rows.append(dict(webhook_id=wid, event_id=eid, event_type=event, payload=payload(event, eid, now, data),
                                 state="pending", attempts=0, next_attempt_at=now, created_at=now))
        return rows

    def enqueue_outcomes(self, conn: sa.Connection, subs: Subscriptions, outcomes: Sequence[Any],
                         now: dt.datetime) -> int:
        """Inside the outcomes' own transaction: one event per outcome per subscribed webhook."""
        wanted = [o for o in outcomes if o.state in OUTCOME_EVENTS]
        if not wanted:
            return 0
        ids = sorted({o.message_id for o in wanted})
        t = m.Message.__table__
        msgs = {r.id: r for r in conn.execute(sa.select(t.c.id, t.c.account_id, t.c.tags, t.c.meta)
                                               .where(t.c.id.in_(ids), t.c.source.in_(SUBMITTED)))}
        rows = []
        for o in wanted:
            msg = msgs.get(o.message_id)
            if msg is None or msg.account_id not in subs:
                continue
            data = {"message_id": o.message_id, "recipient": o.address, "status": o.state, "code": o.code,
                    "reply": o.reply, "upstream": o.upstream, "tags": msg.tags or [], "metadata": msg.meta or {}}
            rows.extend(self._rows(subs, msg.account_id, OUTCOME_EVENTS[o.state], data, now))
        if rows:
            conn.execute(sa.insert(_D), rows)
        return len(rows)

    def enqueue_events(self, subs: Subscriptions, account_id: str, event: str, items: Iterable[dict[str, Any]],
                       now: dt.datetime | None = None) -> int:
        """Events that are not delivery outcomes (suppressed at submission, complained)."""
        now = now or utcnow()
        rows = [r for data in items for r in self._rows(subs, account_id, event, data, now)]
        if rows:
            with self._sessions.begin() as s:
                s.execute(sa.insert(_D), rows)
        return len(rows)

    # -- the delivery queue -------------------------------------------------------------------
    def claim_due(self, owner: str, lease_seconds: float, limit: int = 50,
                  now: dt.datetime | None = None) -> list[Attempt]:
        now = now or utcnow()
        with self._sessions.begin() as s:
            q = (sa.select(_D.c.id).where(_D.c.state == "pending", _D.c.next_attempt_at <= now,
                                          sa.or_(_D.c.lease_until.is_(None), _D.c.lease_until < now))
                 .order_by(_D.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True))
            due = s.execute(q).scalars().all()
            if not due:
                return []
            s.execute(sa.update(_D).where(_D.c.id.in_(due))
                      .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=lease_seconds)))
            rows = s.execute(sa.select(_D, _W.c.url, _W.c.secret_enc).join(_W, _W.c.id == _D.c.webhook_id)
                             .where(_D.c.id.in_(due))).all()
            return [Attempt(_delivery(r), r.url, r.secret_enc) for r in rows]

    def record(self, results: Sequence[Result], now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        with self._sessions.begin() as s:
            for r in results:
                values: dict[str, Any] = dict(attempts=_D.c.attempts + 1, last_status=r.status,
                                              last_error=(r.error or None) and r.error[:1000],
                                              lease_owner=None, lease_until=None)
                if r.delivered:
                    values.update(state="delivered", delivered_at=now)
                elif r.next_attempt_at is None:
                    values.update(state="failed")
                else:
                    values.update(next_attempt_at=r.next_attempt_at)
                s.execute(sa.update(_D).where(_D.c.id == r.delivery_id).values(**values))

    def release(self, owner: str) -> int:
        """At start: deliveries this node had claimed when it stopped are due again at once."""
        with self._sessions.begin() as s:
            return s.execute(sa.update(_D).where(_D.c.lease_owner == owner, _D.c.state == "pending")
                             .values(lease_owner=None, lease_until=None)).rowcount

    def deliveries(self, webhook_id: str, limit: int = 100) -> list[DeliveryRec]:
        with self._reads() as s:
            return [_delivery(r) for r in s.execute(sa.select(_D).where(_D.c.webhook_id == webhook_id)
                                                    .order_by(_D.c.id.desc()).limit(limit))]

    def next_due_at(self) -> dt.datetime | None:
        with self._reads() as s:
            return aware(s.scalar(sa.select(sa.func.min(_D.c.next_attempt_at)).where(_D.c.state == "pending")))


def new_webhook_id() -> str:
    return new_id("whk")


class Outbox:
    """The transactional outbox of webhook events: the queue calls :meth:`on_outcomes` inside the
    outcomes' own transaction (the store's writer thread). The webhook service keeps ``subs`` current
    and, once running, gives ``wake`` to be called (thread-safe) when events were queued."""

    def __init__(self, webhooks: WebhookStore) -> None:
        self.webhooks = webhooks
        self.subs: Subscriptions = {}
        self.wake: Callable[[], None] | None = None

    def on_outcomes(self, conn: sa.Connection, outcomes: Sequence[Any], now: dt.datetime) -> None:
        subs = self.subs
        if not subs:
            return  # no webhook anywhere: nothing on the hot path
        if self.webhooks.enqueue_outcomes(conn, subs, outcomes, now) and self.wake is not None:
            self.wake()
