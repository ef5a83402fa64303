"""Read side of the HTTP API's message tracking: one account's messages, pages by cursor, sandbox.

Pages are keyset pages over (created_at, id), newest first: stable while new mail arrives.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from relay.vocab import NotFound
from relay.store import aware
from relay.store import models as m
from relay.store.queue import PENDING, STATES, EventView, RecipientView

_ORDER = {s: i for i, s in enumerate(STATES)}
SUBMITTED = ("api", "smtp")  # the account's own mail; not system mail (alias verification) or DSNs


# one view of recipients and events for the queue CLI and the API
TrackedRecipient = RecipientView
TrackedEvent = EventView


@dataclass(frozen=True)
class TrackedMessage:
    id: str
    alias_id: str | None
    ip_pool: str
    mail_from: str
    header_message_id: str | None
    subject: str | None
    size: int
    source: str
    sandbox: bool
    tags: list[str]
    metadata: dict[str, Any]
    created_at: dt.datetime
    recipients: tuple[TrackedRecipient, ...] = ()
    events: tuple[TrackedEvent, ...] = field(default=())

    @property
    def status(self) -> str:
        """The least-advanced recipient state (each recipient keeps its own)."""
        return min((r.state for r in self.recipients), key=lambda s: _ORDER.get(s, 0), default="queued")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_tag(tag: str) -> str:
    return f'%"{_escape_like(tag)}"%'


def _matching(query: str) -> sa.ColumnElement[bool]:
    """A search: the queue id or Message-ID exactly; a recipient, the subject or a tag containing it."""
    like = f"%{_escape_like(query.lower())}%"
    header_id = query.strip("<>")
    return sa.or_(m.Message.id == query, m.Message.header_message_id.in_((header_id, f"<{header_id}>")),
                  sa.func.lower(m.Message.subject).like(like, escape="\\"),
                  sa.func.lower(sa.cast(m.Message.tags, sa.Text)).like(like, escape="\\"),
                  m.Message.id.in_(sa.select(m.Recipient.message_id)
                                   .where(sa.func.lower(m.Recipient.address).like(like, escape="\\"))))


class Tracking:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    @staticmethod
    def _message(msg: m.Message, rcpts: list[m.Recipient], events: list[m.Event] | None = None) -> TrackedMessage:
        rv = tuple(RecipientView(address=r.address, state=r.state, attempts=r.attempts,
                                 next_attempt_at=aware(r.next_attempt_at) if r.state in ("queued", "deferred") else None,
                                 upstream=r.upstream, last_code=r.last_code, last_reply=r.last_reply,
                                 updated_at=aware(r.updated_at)) for r in rcpts)
        ev = tuple(EventView(e.type, aware(e.at), e.recipient, e.upstream, e.code, e.reply) for e in events or ())
        return TrackedMessage(msg.id, msg.alias_id, msg.ip_pool, msg.mail_from, msg.header_message_id, msg.subject,
                              msg.size, msg.source, msg.sandbox, list(msg.tags or []), dict(msg.meta or {}),
                              aware(msg.created_at), rv, ev)

    def get(self, account_id: str, message_id: str) -> TrackedMessage:
        with self._reads() as s:
            msg = s.get(m.Message, message_id)
            if msg is None or msg.account_id != account_id:
                raise NotFound(f"no message {message_id!r}")
            rcpts = list(s.scalars(sa.select(m.Recipient).where(m.Recipient.message_id == msg.id)
                                   .order_by(m.Recipient.id)))
            events = list(s.scalars(sa.select(m.Event).where(m.Event.message_id == msg.id).order_by(m.Event.id)))
            return self._message(msg, rcpts, events)

    def page(self, account_id: str, *, status: str | None = None, tag: str | None = None,
             since: dt.datetime | None = None, sandbox: bool = False, after: tuple[dt.datetime, str] | None = None,
             limit: int = 50, query: str | None = None) -> list[TrackedMessage]:
        """Newest first; ``after`` is the (created_at, id) of the last message of the previous page;
        ``query`` searches (see :func:`_matching`)."""
        q = sa.select(m.Message).where(m.Message.account_id == account_id, m.Message.sandbox.is_(sandbox),
                                       m.Message.source.in_(SUBMITTED))
        if status:
            q = q.where(m.Message.id.in_(sa.select(m.Recipient.message_id).where(m.Recipient.state == status)))
        if tag:
            q = q.where(sa.cast(m.Message.tags, sa.Text).like(_like_tag(tag), escape="\\"))
        if since:
            q = q.where(m.Message.created_at >= since)
        if query:
            q = q.where(_matching(query))
        if after:
            at, mid = after
            q = q.where(sa.or_(m.Message.created_at < at, sa.and_(m.Message.created_at == at, m.Message.id < mid)))
        q = q.order_by(m.Message.created_at.desc(), m.Message.id.desc()).limit(limit)
        with self._reads() as s:
            msgs = list(s.scalars(q))
            by_msg: dict[str, list[m.Recipient]] = {x.id: [] for x in msgs}
            if msgs:
                for r in s.scalars(sa.select(m.Recipient).where(m.Recipient.message_id.in_(list(by_msg)))
                                   .order_by(m.Recipient.id)):
                    by_msg[r.message_id].append(r)
            return [self._message(x, by_msg[x.id]) for x in msgs]

    def clear_sandbox(self, account_id: str) -> int:
        """Delete the account's sandbox sends. Returns how many."""
        with self._sessions.begin() as s:
            ids = list(s.scalars(sa.select(m.Message.id).where(m.Message.account_id == account_id,
                                                                m.Message.sandbox.is_(True))))
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                s.execute(sa.delete(m.Event).where(m.Event.message_id.in_(chunk)),
                          execution_options={"synchronize_session": False})
                s.execute(sa.delete(m.Recipient).where(m.Recipient.message_id.in_(chunk)),
                          execution_options={"synchronize_session": False})
                s.execute(sa.delete(m.Message).where(m.Message.id.in_(chunk)),
                          execution_options={"synchronize_session": False})
            return len(ids)

    def sent_today(self, account_id: str, day_start: dt.datetime) -> dict[str, int]:
        """Messages and recipients accepted since ``day_start``, sandbox apart."""
        with self._reads() as s:
            rows = s.execute(sa.select(m.Message.sandbox, sa.func.count(sa.distinct(m.Message.id)),
                                       sa.func.count(m.Recipient.id))
                             .join(m.Recipient, m.Recipient.message_id == m.Message.id)
                             .where(m.Message.account_id == account_id, m.Message.created_at >= day_start,
                                    m.Message.source.in_(SUBMITTED))
                             .group_by(m.Message.sandbox)).all()
        out = {"messages": 0, "recipients": 0, "sandbox_messages": 0, "sandbox_recipients": 0}
        for sandbox, msgs, rcpts in rows:
            prefix = "sandbox_" if sandbox else ""
            out[prefix + "messages"] += int(msgs)
            out[prefix + "recipients"] += int(rcpts)
        return out

    def headers(self, account_id: str, message_id: str, limit: int = 65536) -> bytes:
        """The header section of the account's message as stored (signed), at most ``limit`` bytes read."""
        with self._reads() as s:
            row = s.execute(sa.select(m.Message.account_id, sa.func.substr(m.Message.body, 1, limit))
                            .where(m.Message.id == message_id)).first()
        if row is None or row[0] != account_id:
            raise NotFound(f"no message {message_id!r}")
        head = bytes(row[1] or b"")
        end = head.find(b"\r\n\r\n")
        return head if end < 0 else head[:end + 2]

    def states(self, account_id: str, since: dt.datetime) -> dict[str, int]:
        """The account's recipients per state: every pending one, and the others of messages since ``since``."""
        own = sa.select(m.Message.id).where(m.Message.account_id == account_id, m.Message.sandbox.is_(False),
                                            m.Message.source.in_(SUBMITTED))
        q = (sa.select(m.Recipient.state, sa.func.count())
             .where(m.Recipient.message_id.in_(own.where(m.Message.created_at >= since))
                    | (m.Recipient.state.in_(PENDING) & m.Recipient.message_id.in_(own)))
             .group_by(m.Recipient.state))
        with self._reads() as s:
            counts = {str(state): int(n) for state, n in s.execute(q).all()}
        return {state: counts.get(state, 0) for state in STATES if state != "sandbox"}

    def hourly(self, account_id: str, start: dt.datetime, hours: int,
               types: tuple[str, ...] = ("delivered", "deferred", "bounced")) -> list[dict[str, int]]:
        """Events of ``types`` per hour from ``start`` (``hours`` buckets, oldest first)."""
        edges = [start + dt.timedelta(hours=h + 1) for h in range(hours)]
        bucket = sa.case(*[(m.Event.at < edge, i) for i, edge in enumerate(edges)], else_=hours)
        q = (sa.select(bucket, m.Event.type, sa.func.count())
             .join(m.Message, m.Message.id == m.Event.message_id)
             .where(m.Event.at >= start, m.Event.type.in_(types), m.Message.account_id == account_id,
                    m.Message.source.in_(SUBMITTED))
             .group_by(bucket, m.Event.type))
        out = [{t: 0 for t in types} for _ in range(hours)]
        with self._reads() as s:
            for i, type_, n in s.execute(q).all():
                if 0 <= int(i) < hours:
                    out[int(i)][str(type_)] = int(n)
        return out
