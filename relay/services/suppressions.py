"""An account's suppression list: :class:`SuppressionList`, the one service behind
``/api/v1/suppressions`` and ``relay suppression`` (add, remove, list, CSV import/export).

The list itself is kept by a policy: the core reaches it only through the
:class:`policies.spec.SuppressionBook` that an enabled policy provides (the built-in ``suppression``
policy does). With none, every operation raises :class:`relay.vocab.NotEnabled` (HTTP 501, CLI exit
1): "suppression policy is not enabled".

The rules that are not storage are here: the API checks addresses with the one address rule
(:func:`relay.submission.compose.check_address`) and hands them over in lower case; an expiry
without a time zone is UTC. Adding an address with the reason ``complaint`` raises the
``complained`` webhook event (queued in the store: the gateway's webhook worker delivers it,
whichever process added the entry).

The CSV format (``email[,reason[,expires_at[,detail]]]``, header row optional; export writes
``email,reason,expires_at,detail,created_at``, which import reads back) and the expiry syntax
(``30d``, ``12h``, ``90m``, ``2w`` or an ISO date/time) are parsed and written here, as pure
functions; the front doors only hand over text and print what comes back.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from policies.spec import SUPPRESSION_REASONS as REASONS
from policies.spec import NewSuppression, PolicyServices, SuppressionBook, SuppressionEntry
from relay.ops.config import Settings
from relay.services.admin import check_email
from relay.store import Store, utcnow
from relay.store.runner import DbRunner
from relay.submission.compose import check_address
from relay.submission.policyset import load as load_policies
from relay.vocab import Invalid, NotEnabled

CSV_FIELDS = ["email", "reason", "expires_at", "detail", "created_at"]
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COLUMNS = {"address": "email", "email_address": "email", "expires": "expires_at"}  # CSV header synonyms

NOT_ENABLED = "suppression policy is not enabled"
T = TypeVar("T")

__all__ = ["CSV_FIELDS", "NOT_ENABLED", "REASONS", "Changed", "SuppressionEntry", "SuppressionList", "csv_lines",
           "entry_dict", "from_cli", "parse_expiry", "read_csv"]


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


def entry_dict(r: SuppressionEntry) -> dict[str, Any]:
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
    return NewSuppression(email, reason, _uncell(rec.get("detail") or "") or None, expires)


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


_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula (OWASP CSV injection)


def _cell(value: Any) -> Any:
    """A text cell that a spreadsheet would take for a formula (a bounce's detail comes from a
    remote server) is exported behind a ``'``, as is one starting with ``'`` itself, so that
    :func:`_uncell` can take one off on import (as spreadsheets read a leading ``'``: text)."""
    if isinstance(value, str) and value.startswith((*_FORMULA, "'")):
        return "'" + value
    return "" if value is None else value


def _uncell(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def csv_lines(recs: Iterable[SuppressionEntry]) -> Iterator[str]:
    """The export: a header line, then one line per entry (each ends with a newline)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in [None, *recs]:
        if r is not None:
            writer.writerow({k: _cell(v) for k, v in entry_dict(r).items()})
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()


# -- the service -------------------------------------------------------------------------------------
def _complained(store: Store, account_id: str, complaints: list[dict[str, Any]], now: dt.datetime) -> int:
    """The ``complained`` events of the account's webhooks (subscriptions read afresh: the CLI has no cache)."""
    webhooks = store.webhook_outbox.webhooks
    return webhooks.enqueue_events(webhooks.subscriptions(), account_id, "complained", complaints, now)


class SuppressionList:
    """``book``: the enabled policies' :class:`SuppressionBook` (None: no policy provides one);
    ``wake``: called after a ``complained`` event was queued (the webhook worker sends it at once)."""

    def __init__(self, runner: DbRunner, store: Store, book: SuppressionBook | None,
                 wake: Callable[[], None] | None = None) -> None:
        self.runner = runner
        self.store = store
        self._book = book
        self.wake = wake

    @property
    def book(self) -> SuppressionBook:
        if self._book is None:
            raise NotEnabled(NOT_ENABLED)
        return self._book

    async def _put(self, account_id: str, entries: list[NewSuppression], now: dt.datetime) -> tuple[int, int]:
        """The one way entries get on a list (CLI, CSV import, API): stored, and each ``complaint``
        raises the account's ``complained`` webhook event. Returns (added, updated)."""
        added, updated = await self.book.add(account_id, entries)
        complaints = [{"recipient": e.address, "detail": e.detail} for e in entries if e.reason == "complaint"]
        if complaints:
            await self.runner.write(_complained, self.store, account_id, complaints, now)
            if self.wake is not None:
                self.wake()
        return added, updated

    async def _account(self, name: str) -> tuple[SuppressionBook, str, str]:
        """The book, and the id and name of the account NAME (NotFound when there is none)."""
        book = self.book  # not enabled: said before anything is looked up
        acc = await self.runner.read(self.store.directory.get_account, name)
        return book, acc.id, acc.name

    # -- the HTTP API (the caller's account) -----------------------------------------------------------
    async def entries(self, account_id: str, *, reason: str | None, limit: int) -> list[SuppressionEntry]:
        """The active entries, newest first."""
        return list(await self.book.list(account_id, reason=reason, limit=limit))

    async def add(self, account_id: str, email: str, reason: str, detail: str | None,
                  expires_at: dt.datetime | None) -> SuppressionEntry | None:
        """Add (or update) one address; returns its entry (an expiry already past included)."""
        book = self.book
        try:
            address = check_address(email, "email").lower()
        except ValueError as exc:
            raise Invalid(str(exc), "email") from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        await self._put(account_id, [NewSuppression(address, reason, detail, expires_at)], utcnow())
        return await book.get(account_id, address, include_expired=True)

    async def remove(self, account_id: str, email: str) -> None:
        """NotFound when the address is not on the list."""
        await self.book.remove(account_id, [email])

    async def import_rows(self, account_id: str, text: str, default_reason: str = "manual") -> tuple[int, int]:
        """A CSV upload (the dashboard): all rows or none (:func:`read_csv`; Invalid names the first
        bad row). Returns (added, updated)."""
        now = utcnow()
        return await self._put(account_id, read_csv(text, default_reason, now), now)

    async def export_csv(self, account_id: str) -> str:
        """The active entries as the CLI's export writes them (:func:`csv_lines`)."""
        return "".join(csv_lines(await self.book.list(account_id)))

    # -- the sysadmin (an account by name) -------------------------------------------------------------
    async def add_addresses(self, account: str, emails: Iterable[str], *, reason: str = "manual",
                            expires: str | None = None, detail: str | None = None) -> tuple[Changed, list[str]]:
        """Add addresses to the account's list (or update their entries). Returns what changed and the
        addresses as stored."""
        _, account_id, name = await self._account(account)
        now = utcnow()
        addrs = [address(e) for e in emails]
        expires_at = parse_expiry(expires, now)
        added, updated = await self._put(account_id, [NewSuppression(a, reason, detail, expires_at) for a in addrs],
                                           now)
        return Changed(name, added, updated), addrs

    async def remove_addresses(self, account: str, emails: Iterable[str]) -> tuple[str, int, list[str]]:
        """Take addresses off the list: (account name, entries removed, addresses). NotFound names the
        first address that is not listed."""
        book, account_id, name = await self._account(account)
        addrs = [e.strip().strip("<>").lower() for e in emails]
        return name, await book.remove(account_id, addrs), addrs

    async def listing(self, account: str, *, reason: str | None = None, include_expired: bool = False,
                      limit: int | None = None) -> list[SuppressionEntry]:
        book, account_id, _ = await self._account(account)
        return await book.list(account_id, reason=reason, include_expired=include_expired, limit=limit)

    async def import_csv(self, account: str, text: str, *, default_reason: str = "manual") -> Changed:
        """All rows or none: a bad row stops the import before anything is stored."""
        _, account_id, name = await self._account(account)
        now = utcnow()
        added, updated = await self._put(account_id, read_csv(text, default_reason, now), now)
        return Changed(name, added, updated)

    async def export(self, account: str, *, include_expired: bool = False) -> tuple[str, list[SuppressionEntry]]:
        """The account's name and its entries, for :func:`csv_lines`."""
        book, account_id, name = await self._account(account)
        return name, await book.list(account_id, include_expired=include_expired)


def from_cli(store: Store, settings: Settings, op: Callable[[SuppressionList], Coroutine[Any, Any, T]]) -> T:
    """The CLI's way in (it has no event loop): the enabled policies loaded as ``relay serve`` loads
    them (their settings, a :class:`PolicyServices` on this store), and ``op`` run on the service."""
    runner = DbRunner(store.dialect)
    try:
        policies = load_policies(settings.policies.enabled, settings.policies.options, PolicyServices(
            sessions=store.sessions, reads=store.reads, runner=runner, clock=utcnow,
            max_message_size=lambda: settings.smtp.max_message_size))
        return asyncio.run(op(SuppressionList(runner, store, policies.suppression_book)))
    finally:
        runner.shutdown()
