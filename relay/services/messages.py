"""One account's messages as people look at them (the HTTP API's tracking routes and the dashboard):
pages and searches, one message with its events and header section, and the queue at a glance.

Another account's message is :class:`relay.vocab.NotFound`, like one that does not exist.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from relay.store import Store
from relay.store.runner import DbRunner
from relay.store.tracking import TrackedMessage, Tracking
from relay.vocab import utcnow

HEADERS_MAX = 65536  # bytes of a stored message read to show its header section
HOURS = 24  # the overview's chart


@dataclass(frozen=True)
class Overview:
    states: dict[str, int]  # recipients per state: every pending one, the others of the last HOURS
    hours: list[dt.datetime]  # the start of each hour of the chart, oldest first
    per_hour: list[dict[str, int]]  # delivered, deferred, bounced events in each of those hours


class MessageLog:
    def __init__(self, runner: DbRunner, store: Store) -> None:
        self.runner = runner
        self.tracking = Tracking(store.sessions, store.reads)

    async def page(self, account_id: str, *, sandbox: bool = False, status: str | None = None, tag: str | None = None,
                   since: dt.datetime | None = None, after: tuple[dt.datetime, str] | None = None, limit: int = 50,
                   query: str | None = None) -> list[TrackedMessage]:
        """Newest first; ``query``: a queue id or Message-ID, or part of a recipient, the subject or a tag."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        msgs: list[TrackedMessage] = await self.runner.read(
            self.tracking.page, account_id, status=status, tag=tag, since=since, sandbox=sandbox, after=after,
            limit=limit, query=(query or "").strip()[:320] or None)
        return msgs

    async def get(self, account_id: str, message_id: str) -> TrackedMessage:
        msg: TrackedMessage = await self.runner.read(self.tracking.get, account_id, message_id)
        return msg

    async def headers(self, account_id: str, message_id: str) -> str:
        """The header section as stored (DKIM-signed), decoded leniently for display."""
        raw: bytes = await self.runner.read(self.tracking.headers, account_id, message_id, HEADERS_MAX)
        return raw.decode("utf-8", errors="replace")

    async def clear_sandbox(self, account_id: str) -> int:
        deleted: int = await self.runner.write(self.tracking.clear_sandbox, account_id)
        return deleted

    async def overview(self, account_id: str, now: dt.datetime | None = None) -> Overview:
        now = now or utcnow()
        start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=HOURS - 1)
        states = await self.runner.read(self.tracking.states, account_id, now - dt.timedelta(hours=HOURS))
        per_hour = await self.runner.read(self.tracking.hourly, account_id, start, HOURS)
        return Overview(states, [start + dt.timedelta(hours=h) for h in range(HOURS)], per_hour)
