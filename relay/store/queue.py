"""The durable queue: messages (body included), per-recipient state, events.

Hot-path writes take whole batches (one transaction, one fsync for many messages): the async
side groups concurrent work through :class:`relay.store.runner.Batcher`. Recipient rows are
addressed by (message id, address), so no generated key has to travel back to the caller.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable, Collection, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker

from relay.vocab import FINAL, PENDING, STATES, Conflict, NotFound  # noqa: F401  (FINAL: re-exported)
from relay.store import aware, utcnow
from relay.store import hotsql
from relay.store import models as m
from relay.store.queue_records import (  # noqa: F401  (re-exported: the queue's records)
    EventView,
    MessageView,
    NewMessage,
    Outcome,
    QueuedMessage,
    RecipientView,
)
from relay.ops import metrics

_R = m.Recipient.__table__


def _event(message_id: str, recipient: str, type_: str, at: dt.datetime, upstream: str | None = None,
           code: int | None = None, reply: str | None = None) -> dict:
    return {"message_id": message_id, "recipient": recipient, "type": type_, "at": at, "upstream": upstream,
            "code": code, "reply": reply}


class _HotQueries:
    """The group commit's statements (relay.store.hotsql): the per-message writes of the hot path."""

    def __init__(self, dialect: Dialect) -> None:
        msg, ev = m.Message.__table__, m.Event.__table__
        self.messages = hotsql.insert(dialect, msg, [c.name for c in msg.columns])
        self.recipients = hotsql.insert(dialect, _R, ["message_id", "address", "attempts", "state", "next_attempt_at",
                                                      "lease_owner", "lease_until", "updated_at", "last_reply"])
        self.events = hotsql.insert(dialect, ev, [c.name for c in ev.columns if c.name != "id"])
        c = _R.c
        pending = ", ".join(f"'{s}'" for s in PENDING)
        self.mark = hotsql.HotStatement(
            dialect, "UPDATE recipients SET state = 'delivering', dot_sent_at = :now, upstream = :up, updated_at = :now"
                     f" WHERE message_id = :mid AND address = :addr AND state IN ({pending})",
            {"now": c.dot_sent_at.type, "up": c.upstream.type, "mid": c.message_id.type, "addr": c.address.type})
        self.outcome = hotsql.HotStatement(
            dialect, "UPDATE recipients SET state = :st, last_code = :code, last_reply = :reply, upstream = :up,"
                     " next_attempt_at = :nxt, attempts = attempts + :inc, lease_owner = NULL, lease_until = NULL,"
                     " dot_sent_at = NULL, updated_at = :now WHERE message_id = :mid AND address = :addr",
            {"st": c.state.type, "code": c.last_code.type, "reply": c.last_reply.type, "up": c.upstream.type,
             "nxt": c.next_attempt_at.type, "inc": c.attempts.type, "now": c.updated_at.type,
             "mid": c.message_id.type, "addr": c.address.type})


log = logging.getLogger(__name__)


# -- the queue's scans, as statements (tests/gateway/test_query_plans.py states their plans) ------------
def due_query(now: dt.datetime, limit: int) -> sa.Select:
    """Recipients due now and not leased, oldest due first (ix_recipients_pending_due)."""
    return (sa.select(m.Recipient.id, m.Recipient.message_id, m.Recipient.address, m.Recipient.attempts)
            .where(m.Recipient.state.in_(("queued", "deferred")), m.Recipient.next_attempt_at <= now,
                   sa.or_(m.Recipient.lease_until.is_(None), m.Recipient.lease_until < now))
            .order_by(m.Recipient.next_attempt_at).limit(limit).with_for_update(skip_locked=True))


def stale_query(now: dt.datetime) -> sa.Select:
    """Recipients left mid-delivery under an expired lease (ix_recipients_due: state first)."""
    return (sa.select(m.Recipient.message_id, m.Recipient.address, m.Recipient.upstream)
            .where(m.Recipient.state == "delivering", m.Recipient.lease_until < now)
            .with_for_update(skip_locked=True))


def renew_statement(owner: str, until: dt.datetime) -> sa.Update:
    """One node's leases extended (ix_recipients_lease_owner)."""
    return (sa.update(m.Recipient.__table__)
            .where(m.Recipient.lease_owner == owner, m.Recipient.state.in_(PENDING)).values(lease_until=until))


def held_statement(ip_pool: str, now: dt.datetime) -> sa.Update:
    """A pool's parked recipients due now (ix_messages_ip_pool, then the recipients of those messages)."""
    held = sa.select(m.Message.id).where(m.Message.ip_pool == ip_pool)
    return (sa.update(m.Recipient)
            .where(m.Recipient.state == "deferred", m.Recipient.upstream.is_(None), m.Recipient.next_attempt_at > now,
                   m.Recipient.message_id.in_(held))
            .values(next_attempt_at=now))


def old_events_query(before: dt.datetime, batch: int) -> sa.Select:
    """The oldest events before ``before`` (ix_events_at), one retention batch."""
    return sa.select(m.Event.id).where(m.Event.at < before).order_by(m.Event.at).limit(batch)


RESENT_REPLY = ("sent again: the final dot went to the upstream but its reply never came back (the "
                "delivering process stopped): a possible duplicate, never a loss")


class Queue:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None, *,
                 on_outcomes: Callable[[sa.Connection, Sequence[Outcome], dt.datetime], None] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions
        self._engine = sessions.kw["bind"]
        self._sql = _HotQueries(self._engine.dialect)
        # Called inside the outcomes' transaction (the webhook outbox queues its events there).
        self.on_outcomes = on_outcomes

    # -- hot path ---------------------------------------------------------------------------
    def enqueue(self, batch: Sequence[NewMessage]) -> None:
        """Commit many messages, their recipients and 'accepted' events in ONE transaction."""
        self.apply(enqueue=batch)

    def apply(self, *, enqueue: Sequence[NewMessage] = (), markers: Sequence[tuple[str, str, str]] = (),
              outcomes: Sequence[Outcome] = (), now: dt.datetime | None = None) -> None:
        """One transaction (one fsync) for everything the hot path has pending: new messages, dot
        markers and delivery outcomes. This is the group commit of :class:`relay.store.runner.StoreWriter`."""
        now = now or utcnow()
        with self._engine.begin() as conn:  # Core, not an ORM session: this is the hot path
            if enqueue:
                self._enqueue(conn, enqueue)
            if markers:
                self._mark(conn, markers, now)
            if outcomes:
                self._record(conn, outcomes, now)

    def _enqueue(self, conn: sa.Connection, batch: Sequence[NewMessage]) -> None:
        msgs, rcpts, events = [], [], []
        for n in batch:
            msgs.append({
                "id": n.id, "account_id": n.account_id, "api_key_id": n.api_key_id, "alias_id": n.alias_id,
                "ip_pool": n.ip_pool, "mail_from": n.mail_from, "header_message_id": n.header_message_id,
                "subject": n.subject, "body": n.body, "size": len(n.body), "source": n.source, "sandbox": n.sandbox,
                "idempotency_key": n.idempotency_key, "tags": n.tags, "meta": n.meta, "created_at": n.created_at,
                "expires_at": n.expires_at, "upstream_id": n.upstream_id})
            for addr in n.recipients:
                reason = n.suppressed.get(addr)
                rcpts.append({
                    "message_id": n.id, "address": addr, "attempts": 0,
                    "state": "suppressed" if reason else "sandbox" if n.sandbox else "queued",
                    "next_attempt_at": n.created_at, "lease_owner": None if reason else n.lease_owner,
                    "lease_until": None if reason else n.lease_until, "updated_at": n.created_at,
                    "last_reply": reason})
                events.append(_event(n.id, addr, "accepted", n.created_at))
                if reason:
                    events.append(_event(n.id, addr, "suppressed", n.created_at, reply=reason))
        sql = self._sql
        sql.messages.run(conn, msgs)
        sql.recipients.run(conn, rcpts)
        sql.events.run(conn, events)

    def mark_dot_sent(self, items: Sequence[tuple[str, str, str]], now: dt.datetime | None = None) -> None:
        """(message id, address, upstream): the final dot has gone (see relay.delivery.journal)."""
        self.apply(markers=items, now=now)

    def _mark(self, conn: sa.Connection, items: Sequence[tuple[str, str, str]], now: dt.datetime) -> None:
        self._sql.mark.run(conn, [{"mid": i, "addr": a, "up": u, "now": now} for i, a, u in items])

    def record_outcomes(self, outcomes: Sequence[Outcome], now: dt.datetime | None = None) -> None:
        """Write results and their events; release the leases."""
        self.apply(outcomes=outcomes, now=now)

    def _record(self, conn: sa.Connection, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
        rows, events = [], []
        for o in outcomes:
            rows.append({"mid": o.message_id, "addr": o.address, "st": o.state, "code": o.code, "reply": o.reply,
                         "up": o.upstream, "nxt": o.next_attempt_at or now, "inc": 1 if o.attempted else 0,
                         "now": now})
            events.append(_event(o.message_id, o.address, o.state, now, o.upstream, o.code, o.reply))
        self._sql.outcome.run(conn, rows)
        self._sql.events.run(conn, events)
        if self.on_outcomes is not None:
            self.on_outcomes(conn, outcomes, now)

    def recover(self, owner: str, dots: Sequence[tuple[str, str, int]] = (),
                now: dt.datetime | None = None) -> list[tuple[str, str]]:
        """At start (and at a graceful stop): finish what this node left mid-flight.

        A recipient whose final dot had been let go without the upstream's reply is NOT delivered
        (RFC 5321 6.1, RFC 1047: without the reply the upstream may have discarded it): it is due
        again at once, a possible duplicate, never a loss. ``dots`` are this node's dot-journal
        records (relay.delivery.journal): one counts while the recipient is still pending at the
        attempt it names. The store's own markers (written after the release, for other nodes)
        count too. Every other claim of this node is released so the work is due at once. Returns
        the (queue id, recipient) sent again.
        """
        now = now or utcnow()
        with self._sessions.begin() as s:
            rows = s.execute(sa.select(m.Recipient.message_id, m.Recipient.address, m.Recipient.upstream)
                             .where(m.Recipient.state == "delivering", m.Recipient.dot_sent_at.is_not(None),
                                    sa.or_(m.Recipient.lease_owner == owner, m.Recipient.lease_until < now))).all()
            found = {(mid, addr): up for mid, addr, up in rows}
            wanted = {(qid, addr): n for qid, addr, n in dots}
            ids = sorted({qid for qid, _ in wanted})
            for i in range(0, len(ids), 500):
                for r in s.execute(sa.select(m.Recipient.message_id, m.Recipient.address, m.Recipient.attempts,
                                             m.Recipient.upstream)
                                   .where(m.Recipient.message_id.in_(ids[i:i + 500]), m.Recipient.state.in_(PENDING),
                                          sa.or_(m.Recipient.lease_owner == owner, m.Recipient.lease_owner.is_(None),
                                                 m.Recipient.lease_until < now))):
                    if wanted.get((r.message_id, r.address)) == r.attempts:
                        found.setdefault((r.message_id, r.address), r.upstream)
            resent = self._send_again(s, [(mid, addr, up) for (mid, addr), up in found.items()], now)
            s.execute(sa.update(m.Recipient)
                      .where(m.Recipient.lease_owner == owner, m.Recipient.state.in_(PENDING))
                      .values(lease_owner=None, lease_until=None), execution_options={"synchronize_session": False})
            return resent

    def hand_back(self, owner: str, keep: Collection[str] = ()) -> int:
        """A graceful stop: ``owner``'s claims on queued and deferred recipients go back (no lease),
        except those of the messages in ``keep`` (attempts in flight). Returns how many."""
        with self._sessions.begin() as s:
            q = sa.update(m.Recipient).where(m.Recipient.lease_owner == owner,
                                             m.Recipient.state.in_(("queued", "deferred")))
            if keep:
                q = q.where(m.Recipient.message_id.not_in(sorted(keep)))
            return s.execute(q.values(lease_owner=None, lease_until=None),
                             execution_options={"synchronize_session": False}).rowcount

    def _send_again(self, s: Session, rows: Iterable, now: dt.datetime) -> list[tuple[str, str]]:
        """Recipients whose final dot went without the upstream's reply: due again now (a possible
        duplicate, counted and logged by the caller), never recorded as delivered."""
        out = []
        for mid, addr, upstream in rows:
            s.execute(sa.update(m.Recipient)
                      .where(m.Recipient.message_id == mid, m.Recipient.address == addr)
                      .values(state="deferred", next_attempt_at=now, last_code=None, last_reply=RESENT_REPLY,
                              attempts=m.Recipient.attempts + 1,  # that attempt is over (its journal record too)
                              lease_owner=None, lease_until=None, dot_sent_at=None, updated_at=now))
            s.add(m.Event(message_id=mid, recipient=addr, type="deferred", at=now, upstream=upstream,
                          reply=RESENT_REPLY))
            out.append((mid, addr))
        if out:
            metrics.possible_duplicates(len(out))
            log.warning("delivering again: the final dot went without the upstream's reply (possible duplicates)",
                        extra={"recipients": len(out), "queue_ids": sorted({mid for mid, _ in out})[:50]})
        return out

    def claim_due(self, owner: str, lease_seconds: float, limit: int = 200,
                  now: dt.datetime | None = None) -> list[QueuedMessage]:
        """Lease due recipients (deferred, or left by a dead node) and return their messages."""
        now = now or utcnow()
        until = now + dt.timedelta(seconds=lease_seconds)
        with self._sessions.begin() as s:
            self._send_again(s, s.execute(stale_query(now)).all(), now)
            due = s.execute(due_query(now, limit)).all()
            if not due:
                return []
            s.execute(sa.update(m.Recipient).where(m.Recipient.id.in_([r.id for r in due]))
                      .values(lease_owner=owner, lease_until=until), execution_options={"synchronize_session": False})
            by_msg: dict[str, list] = {}
            for r in due:
                by_msg.setdefault(r.message_id, []).append(r)
            msgs = s.scalars(sa.select(m.Message).where(m.Message.id.in_(list(by_msg)))).all()
            return [QueuedMessage(id=x.id, ip_pool=x.ip_pool, mail_from=x.mail_from, body=x.body,
                                  recipients=[r.address for r in by_msg[x.id]], account_id=x.account_id,
                                  expires_at=aware(x.expires_at), created_at=aware(x.created_at), source=x.source,
                                  tries={r.address: r.attempts for r in by_msg[x.id]}, upstream_id=x.upstream_id)
                    for x in msgs]

    def renew_leases(self, owner: str, lease_seconds: float, now: dt.datetime | None = None) -> int:
        """Extend this node's claims: a long backlog in the active queue must not be taken over by
        another node while it is still being worked on here."""
        now = now or utcnow()
        with self._engine.begin() as conn:
            return conn.execute(renew_statement(owner, now + dt.timedelta(seconds=lease_seconds))).rowcount

    def next_due_at(self) -> dt.datetime | None:
        with self._reads() as s:
            return aware(s.scalar(sa.select(sa.func.min(m.Recipient.next_attempt_at))
                                  .where(m.Recipient.state.in_(("queued", "deferred")))))

    # -- admin --------------------------------------------------------------------------------
    def _view(self, s: Session, msg: m.Message, detail: bool) -> MessageView:
        rcpts = s.scalars(sa.select(m.Recipient).where(m.Recipient.message_id == msg.id).order_by(m.Recipient.id))
        rv = tuple(RecipientView(r.address, r.state, r.attempts, aware(r.next_attempt_at), r.upstream, r.last_code,
                                 r.last_reply, aware(r.updated_at)) for r in rcpts)
        ev: tuple[EventView, ...] = ()
        if detail:
            ev = tuple(EventView(e.type, aware(e.at), e.recipient, e.upstream, e.code, e.reply)
                       for e in s.scalars(sa.select(m.Event).where(m.Event.message_id == msg.id).order_by(m.Event.id)))
        return MessageView(msg.id, msg.account_id, msg.alias_id, msg.ip_pool, msg.mail_from, msg.header_message_id,
                           msg.subject, msg.size, msg.source, msg.sandbox, aware(msg.created_at),
                           aware(msg.expires_at), rv, ev)

    def list_messages(self, state: str | None = None, limit: int = 100) -> list[MessageView]:
        with self._reads() as s:
            q = sa.select(m.Message).order_by(m.Message.created_at.desc()).limit(limit)
            if state:
                q = q.where(m.Message.id.in_(sa.select(m.Recipient.message_id).where(m.Recipient.state == state)))
            return [self._view(s, x, False) for x in s.scalars(q)]

    def show(self, message_id: str) -> MessageView:
        with self._reads() as s:
            msg = s.get(m.Message, message_id)
            if msg is None:
                raise NotFound(f"no message {message_id!r}")
            return self._view(s, msg, True)

    def body(self, message_id: str) -> bytes:
        with self._reads() as s:
            body = s.scalar(sa.select(m.Message.body).where(m.Message.id == message_id))
            if body is None:
                raise NotFound(f"no message {message_id!r}")
            return body

    def retry(self, message_id: str | None = None, now: dt.datetime | None = None, *,
              account_id: str | None = None) -> int:
        """Make deferred recipients (of one message, or all) due now. Returns how many. With
        ``account_id``, another account's message is NotFound (and ``None`` means all of its own)."""
        now = now or utcnow()
        with self._sessions.begin() as s:
            q = sa.update(m.Recipient).where(m.Recipient.state == "deferred")
            if message_id:
                msg = s.get(m.Message, message_id)
                if msg is None or (account_id is not None and msg.account_id != account_id):
                    raise NotFound(f"no message {message_id!r}")
                q = q.where(m.Recipient.message_id == message_id)
            elif account_id is not None:
                q = q.where(m.Recipient.message_id.in_(sa.select(m.Message.id).where(m.Message.account_id == account_id)))
            return s.execute(q.values(next_attempt_at=now), execution_options={"synchronize_session": False}).rowcount

    def release_held(self, ip_pool: str, now: dt.datetime | None = None) -> int:
        """Deferred recipients of ``ip_pool`` that no upstream has tried since (held back while every
        upstream of the pool was marked down) become due now: the pool is back. Returns how many."""
        now = now or utcnow()
        with self._sessions.begin() as s:
            return s.execute(held_statement(ip_pool, now),
                             execution_options={"synchronize_session": False}).rowcount

    def delete(self, message_id: str, *, account_id: str | None = None, unless_delivering: bool = False) -> None:
        """Delete a message with its recipients and events. With ``account_id``, another account's
        message is NotFound; ``unless_delivering`` refuses (Conflict) while an attempt holds it."""
        with self._sessions.begin() as s:
            msg = s.get(m.Message, message_id)
            if msg is None or (account_id is not None and msg.account_id != account_id):
                raise NotFound(f"no message {message_id!r}")
            if unless_delivering and s.scalar(sa.select(sa.func.count()).select_from(m.Recipient).where(
                    m.Recipient.message_id == message_id, m.Recipient.state.in_(PENDING),
                    m.Recipient.lease_until > utcnow())):  # a node holds it for an attempt
                raise Conflict("The message is being delivered right now; try again in a moment")
            s.execute(sa.delete(m.Event).where(m.Event.message_id == message_id))
            s.execute(sa.delete(m.Recipient).where(m.Recipient.message_id == message_id))
            s.delete(msg)

    def prune_events(self, before: dt.datetime, batch: int = 5000) -> int:
        """Delete up to ``batch`` events older than ``before`` (oldest first), in one short transaction;
        the caller repeats while a full batch went. Returns how many."""
        with self._sessions.begin() as s:
            ids = list(s.scalars(old_events_query(before, batch)))
            if ids:
                s.execute(sa.delete(m.Event).where(m.Event.id.in_(ids)), execution_options={"synchronize_session": False})
            return len(ids)

    def count_by_state(self) -> dict[str, int]:
        with self._reads() as s:
            return dict(s.execute(sa.select(m.Recipient.state, sa.func.count()).group_by(m.Recipient.state)).all())
