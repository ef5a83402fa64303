"""An account's suppression list: the HTTP API's :class:`SuppressionList`, and for the sysadmin
(the CLI) add, remove, list, and CSV import/export.

The API checks addresses with the one address rule (:func:`relay.submission.compose.check_address`)
and stores them in lower case; an expiry without a time zone is UTC. Adding an address with the
reason ``complaint`` raises the ``complained`` webhook event.

The CSV format (``email[,reason[,expires_at[,detail]]]``, header row optional; export writes
``email,reason,expires_at,detail,created_at``, which import reads back) and the expiry syntax
(``30d``, ``12h``, ``90m``, ``2w`` or an ISO date/time) are parsed and written here, as pure
functions; the front doors only hand over text and print what comes back.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from relay.events.webhooks import WebhookService
from relay.services.admin import check_email
from relay.store import Store, utcnow
from relay.store.suppressions import (
    REASONS,
    NewSuppression,
    SuppressionRec,
    Suppressions,
)
from relay.store.runner import DbRunner
from relay.submission.compose import check_address
from relay.vocab import Invalid

CSV_FIELDS = ["email", "reason", "expires_at", "detail", "created_at"]
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COLUMNS = {"address": "email", "email_address": "email", "expires": "expires_at"}  # CSV header synonyms

__all__ = ["CSV_FIELDS", "REASONS", "Changed", "SuppressionList", "add", "csv_lines", "entry_dict", "export",
           "import_csv", "listing",
           "parse_expiry", "read_csv", "remove"]


@dataclass(frozen=True)
class Changed:
    """What an add or an import did to one account's list."""

    account: str
    added: int
    updated: int


# -- pure helpers ---------------------------------------------------------------------------------------
def parse_expiry(value: str | None, now: dt.datetime, field: str = "expires") -> dt.datetime | None:
    """``30d``, ``12h``, ``90m``, ``2w``, or an ISO date/time (UTC unless it says otherwise)."""
    if value is None or not value.strip() or value.strip().lower() in ("never", "none"):
        return None
    text = value.strip().lower()
    m = _DURATION.match(text)
    if m:
        return now + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise Invalid(f"invalid expiry {value!r}: expected a duration (30d, 12h, 90m, 2w) or an ISO date/time",
                      field=field) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def address(value: str, field: str = "email") -> str:
    """An address as a sysadmin types it (``<a@b.org>`` too), checked and lower-cased."""
    return check_email(value.strip().strip("<>"), field)


def entry_dict(r: SuppressionRec) -> dict[str, Any]:
    return {"email": r.address, "reason": r.reason, "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "detail": r.detail, "created_at": r.created_at.isoformat()}


def _row(n: int, rec: dict[str, str], default_reason: str, now: dt.datetime) -> NewSuppression:
    where = f"row {n}"
    try:
        email = address(rec.get("email", ""), field=where)
    except Invalid as exc:
        raise Invalid(f"{where}: {exc}", field=where) from None
    reason = rec.get("reason") or default_reason
    if reason not in REASONS:
        raise Invalid(f"{where}: invalid reason {reason!r} (expected one of {', '.join(REASONS)})", field=where)
    expires = parse_expiry(rec.get("expires_at") or None, now, field=where)
    return NewSuppression(email, reason, rec.get("detail") or None, expires)


def read_csv(text: str, default_reason: str, now: dt.datetime) -> list[NewSuppression]:
    """``email[,reason[,expires_at[,detail]]]`` rows; a header row naming the columns is optional.
    The first bad row raises Invalid naming it; a repeated address keeps its first row."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)
            and not r[0].lstrip().startswith("#")]
    columns = ["email", "reason", "expires_at", "detail"]
    if rows and rows[0][0].strip().lower() in ("email", "address", "email_address"):
        columns = [_COLUMNS.get(c.strip().lower(), c.strip().lower()) for c in rows[0]]
        rows = rows[1:]
    out: list[NewSuppression] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        entry = _row(n, {columns[i]: v.strip() for i, v in enumerate(row) if i < len(columns)}, default_reason, now)
        if entry.address not in seen:
            seen.add(entry.address)
            out.append(entry)
    return out


def csv_lines(recs: Iterable[SuppressionRec]) -> Iterator[str]:
    """The export: a header line, then one line per entry (each ends with a newline)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in [None, *recs]:
        if r is not None:
            writer.writerow({k: v if v is not None else "" for k, v in entry_dict(r).items()})
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()


# -- operations on the store ------------------------------------------------------------------------------
def _list(store: Store) -> Suppressions:
    return Suppressions(store.sessions, store.reads)


def store_entries(store: Store, account_id: str, entries: list[NewSuppression], now: dt.datetime) -> tuple[int, int]:
    """The one way entries get on a list (CLI, CSV import, API): stored, and each ``complaint`` raises
    the account's ``complained`` webhook event (queued in the store: the gateway's webhook worker
    delivers it, whichever process added the entry). Returns (added, updated)."""
    added, updated = _list(store).add(account_id, entries, now)
    complaints = [{"recipient": e.address, "detail": e.detail} for e in entries if e.reason == "complaint"]
    if complaints:
        outbox = store.webhook_outbox.webhooks
        outbox.enqueue_events(outbox.subscriptions(), account_id, "complained", complaints, now)
    return added, updated


def add(store: Store, account: str, emails: Iterable[str], *, reason: str = "manual", expires: str | None = None,
        detail: str | None = None) -> tuple[Changed, list[str]]:
    """Add addresses to the account's list (or update their entries). Returns what changed and the
    addresses as stored."""
    acc = store.directory.get_account(account)
    now = utcnow()
    addrs = [address(e) for e in emails]
    expires_at = parse_expiry(expires, now)
    added, updated = store_entries(store, acc.id, [NewSuppression(a, reason, detail, expires_at) for a in addrs], now)
    return Changed(acc.name, added, updated), addrs


def remove(store: Store, account: str, emails: Iterable[str]) -> tuple[str, int, list[str]]:
    """Take addresses off the list: (account name, entries removed, addresses). NotFound names the
    first address that is not listed."""
    acc = store.directory.get_account(account)
    addrs = [e.strip().strip("<>").lower() for e in emails]
    return acc.name, _list(store).remove(acc.id, addrs), addrs


def listing(store: Store, account: str, *, reason: str | None = None, include_expired: bool = False,
            limit: int | None = None) -> list[SuppressionRec]:
    acc = store.directory.get_account(account)
    return _list(store).list(acc.id, reason=reason, include_expired=include_expired, limit=limit)


def import_csv(store: Store, account: str, text: str, *, default_reason: str = "manual") -> Changed:
    """All rows or none: a bad row stops the import before anything is stored."""
    acc = store.directory.get_account(account)
    now = utcnow()
    added, updated = store_entries(store, acc.id, read_csv(text, default_reason, now), now)
    return Changed(acc.name, added, updated)


def export(store: Store, account: str, *, include_expired: bool = False) -> tuple[str, list[SuppressionRec]]:
    """The account's name and its entries, for :func:`csv_lines`."""
    acc = store.directory.get_account(account)
    return acc.name, _list(store).list(acc.id, include_expired=include_expired)


# -- the HTTP API's view --------------------------------------------------------------------------------
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


class SuppressionList:
    def __init__(self, runner: DbRunner, store: Store, webhooks: WebhookService) -> None:
        self.runner = runner
        self.relay_store = store
        self.store = Suppressions(store.sessions, store.reads)
        self.webhooks = webhooks  # woken after a complaint, so its event goes out at once

    async def entries(self, account_id: str, *, reason: str | None, limit: int) -> list[SuppressionRec]:
        """The active entries, newest first."""
        return list(await self.runner.read(self.store.list, account_id, reason=reason, limit=limit))

    async def add(self, account_id: str, email: str, reason: str, detail: str | None,
                  expires_at: dt.datetime | None) -> SuppressionRec | None:
        """Add (or update) one address; returns its entry (None when ``expires_at`` is already past)."""
        try:
            address = check_address(email, "email").lower()
        except ValueError as exc:
            raise Invalid(str(exc), "email") from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        entry = NewSuppression(address, reason, detail, expires_at)
        await self.runner.write(store_entries, self.relay_store, account_id, [entry], utcnow())
        if reason == "complaint":
            self.webhooks.wake()
        return await self.runner.read(self.store.lookup, account_id, address, _EPOCH)

    async def remove(self, account_id: str, email: str) -> None:
        """NotFound when the address is not on the list."""
        await self.runner.write(self.store.remove, account_id, [email])

    async def import_csv(self, account_id: str, text: str, default_reason: str = "manual") -> tuple[int, int]:
        """All rows or none (:func:`read_csv`; Invalid names the first bad row): (added, updated)."""
        now = utcnow()
        entries = read_csv(text, default_reason, now)
        added, updated = await self.runner.write(store_entries, self.relay_store, account_id, entries, now)
        if any(e.reason == "complaint" for e in entries):
            self.webhooks.wake()
        return added, updated

    async def export_csv(self, account_id: str) -> str:
        """The active entries as the CLI's export writes them (:func:`csv_lines`)."""
        recs = await self.runner.read(self.store.list, account_id)
        return "".join(csv_lines(recs))
