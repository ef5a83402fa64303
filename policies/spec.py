"""The policy hook contract (pluggy's model: the spec is written once, here, with docstrings).

A policy is a plain class. It implements the async hooks for the phases it cares about and
ignores the rest. Each deciding hook returns a :class:`Verdict` or ``None`` (no opinion).
:class:`PolicySpec` documents every hook; a policy need not inherit from it (a hook it does not
define costs nothing).

Finding and enabling
    Policies are found through the entry-point group ``relay.policies`` (:data:`ENTRY_POINT_GROUP`)
    and enabled, in order, in the config file::

        [policies]
        enabled = ["limits", "suppression", "quota"]
        [policies.quota]
        account_daily = 10000          # the policy's own settings

    A third party ships a policy as its own package::

        # pyproject.toml of the package "relay-greylist"
        [project.entry-points."relay.policies"]
        greylist = "relay_greylist:Greylist"

    Two installed policies with one name, an enabled name that is not installed, or settings for a
    policy that is not enabled stop start-up with a message saying so.

Construction
    ``cls(options, services)``: ``options`` is the policy's ``[policies.<name>]`` table (a dict,
    unvalidated: the policy validates it in its constructor and raises
    :class:`relay.vocab.ConfigError` naming ``policies.<name>.<key>`` and the bad value).
    ``services`` is a :class:`PolicyServices`, the narrow and typed set of what a policy may use:
    ``sessions``/``reads`` (SQLAlchemy session factories for writes and reads), ``runner`` (run
    synchronous store code in threads, never block the event loop), ``clock`` (aware UTC "now";
    tests move it) and ``max_message_size()`` (the current ``smtp.max_message_size``). Never the
    gateway. A constructor taking only ``options`` is also accepted (decided from its signature).

Commands
    A policy may bring ``relay`` subcommands (a click command or group) through the entry-point
    group ``relay.commands`` (:data:`COMMANDS_ENTRY_POINT_GROUP`); the quota policy's ``relay quota``
    is one. The core CLI knows no policy by name.

Ordering and results
    For one event the policies run in the ``enabled`` order; the first refusing verdict wins and the
    rest are not asked. An ``accept`` verdict only says "no objection from me". A hook that raises
    makes the submission tempfail with ``451 4.3.0`` (HTTP 503): a broken policy never crashes a
    session and never accepts by accident.

Front doors
    Only the front doors turn a Verdict into wire text (SMTP reply) or an HTTP status
    (``Verdict.http_status``: 422 with ``"suppressed": true`` for a suppressed recipient, 429 over a
    quota, 400 over a limit). A public message never names the mechanism that produced it
    (``Verdict.reason`` is for logs and ``relay route explain`` only).

What a policy provides
    Besides hooks, a policy may provide one of the gateway's services, as an attribute:

    - ``suppression_book``: a :class:`SuppressionBook`, the accounts' suppression lists. The core
      reaches suppressions only through it: ``/api/v1/suppressions`` and ``relay suppression`` (list,
      add, remove, CSV import and export) and the automatic suppression of hard bounces. The first
      enabled policy that provides one is used (:attr:`relay.submission.policyset.PolicySet.suppression_book`);
      with none, the API answers ``501`` "suppression policy is not enabled", the CLI exits 1 with
      that message, and hard bounces are not recorded. The built-in ``suppression`` policy provides it.

Context
    ``ctx`` is a :class:`relay.submission.pipeline.Context`, the same for SMTP and HTTP: ``listener``
    (``submission``, ``smtps``, ``relay``, ``api``), ``peer``, ``identity`` (account id and name,
    API key id, scopes), ``alias`` (the verified sender alias; ``ctx.ip_pool`` is its IP pool),
    ``mail_from``, ``recipients`` (those accepted so far), ``sandbox`` and ``extra``, a dict for
    the transaction's state. Policies keep their per-transaction state in ``ctx.extra`` under their
    own name. Keys set by the pipeline:

    - ``ctx.extra[DRY_RUN]`` true: ``relay route explain`` is asking. Decide as usual but change
      nothing (reserve nothing, count nothing).
    - ``ctx.extra[SIZE]``: the message size in bytes (at ``on_data``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence
    from email.message import EmailMessage

    from sqlalchemy.orm import Session, sessionmaker

    from relay.store.runner import DbRunner

    from relay.submission.pipeline import Context


@dataclass(frozen=True)
class PolicyServices:
    """What the gateway gives a policy: the store's session factories, the thread runner, the clock
    and the one gateway setting a policy reads. Built once by the composition root."""

    sessions: "sessionmaker[Session]"
    reads: "sessionmaker[Session]"
    runner: "DbRunner"
    clock: "Callable[[], dt.datetime]"
    max_message_size: "Callable[[], int | None]" = lambda: None  # smtp.max_message_size, as reloaded


SUPPRESSION_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")


@dataclass(frozen=True)
class SuppressionEntry:
    """One address on an account's suppression list (``address`` in lower case)."""

    address: str
    reason: str  # one of SUPPRESSION_REASONS
    detail: str | None
    expires_at: "dt.datetime | None"
    created_at: "dt.datetime"

    def active(self, now: "dt.datetime") -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class NewSuppression:
    """An entry to add: ``address`` already checked and in lower case, ``expires_at`` aware (None: never)."""

    address: str
    reason: str = "manual"
    detail: str | None = None
    expires_at: "dt.datetime | None" = None


class SuppressionBook(Protocol):
    """The accounts' suppression lists, as a policy provides them (``policy.suppression_book``).

    Addresses match case-insensitively; an entry whose ``expires_at`` has passed no longer
    suppresses. The rules that are not storage stay in the core (:mod:`relay.services.suppressions`):
    the address check, the expiry syntax, CSV parsing and writing, the ``complained`` webhook event.
    A CSV import is one :meth:`add` of all its rows; an export is :meth:`list` with ``include_expired``."""

    async def list(self, account_id: str, *, reason: str | None = None, include_expired: bool = False,
                   limit: int | None = None) -> "list[SuppressionEntry]":
        """The account's entries, newest first: the active ones, or all with ``include_expired``."""

    async def get(self, account_id: str, address: str, *, include_expired: bool = False) -> SuppressionEntry | None:
        """The entry for ``address`` (any case): the active one, or also a lapsed one with ``include_expired``."""

    async def add(self, account_id: str, entries: "Sequence[NewSuppression]") -> tuple[int, int]:
        """Insert or update entries, all or none (one transaction). Returns (added, updated)."""

    async def remove(self, account_id: str, addresses: "Sequence[str]") -> int:
        """Delete entries, all or none; :class:`relay.vocab.NotFound` names the first address that is
        not listed. Returns how many."""

    async def record(self, account_id: str, address: str, reason: str, detail: str | None = None) -> None:
        """Automatic suppression (a hard bounce, a complaint): the address is suppressed from now on,
        without expiry, whatever entry it had."""


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Verdict:
    """A policy's answer. ``http_status`` lets the front door pick 422/429/400 as the seeds do."""

    action: Action
    code: int = 250
    enhanced: str = "2.0.0"
    message: str = "OK"
    http_status: int | None = None
    reason: str = field(default="", compare=False)  # internal: logs only, never on the wire

    @classmethod
    def accept(cls) -> "Verdict":
        return cls(Action.ACCEPT)

    @classmethod
    def reject(cls, code: int = 550, enhanced: str = "5.7.1", message: str = "Message refused",
               *, http_status: int | None = None, reason: str = "") -> "Verdict":
        return cls(Action.REJECT, code, enhanced, message, http_status, reason)

    @classmethod
    def tempfail(cls, code: int = 451, enhanced: str = "4.7.1", message: str = "Try again later",
                 *, http_status: int | None = None, reason: str = "") -> "Verdict":
        return cls(Action.TEMPFAIL, code, enhanced, message, http_status, reason)

    @property
    def refuses(self) -> bool:
        return self.action is not Action.ACCEPT


class PolicySpec(Protocol):
    """Every hook a policy may implement (all optional, all ``async``). Documentation only."""

    async def on_connect(self, ctx: "Context") -> Verdict | None:
        """A client connected (``ctx.listener``, ``ctx.peer``; no identity yet).

        A refusal closes the session: SMTP answers ``554`` (reject) or ``421`` (tempfail) with the
        verdict's enhanced code and message instead of the greeting."""

    async def on_mail(self, ctx: "Context", sender: str) -> Verdict | None:
        """MAIL FROM (SMTP) or the ``from`` field (HTTP), once the sender's verified alias (and so
        the IP pool) is known. A refusal refuses the whole transaction."""

    async def on_rcpt(self, ctx: "Context", recipient: str) -> Verdict | None:
        """One recipient. A refusal applies to that recipient alone: the others still go.

        ``ctx.recipients`` holds the recipients accepted before this one. A policy that counts or
        reserves something here must give it back in :meth:`on_abort`, and, for a recipient that a
        later policy refused (it is then missing from ``ctx.recipients``), in :meth:`on_commit`."""

    async def on_data(self, ctx: "Context", message: "EmailMessage") -> Verdict | None:
        """The whole message, parsed, before it is signed and committed. A refusal refuses the
        message for every recipient. ``ctx.recipients`` is final here."""

    async def on_commit(self, ctx: "Context", queue_id: str) -> None:
        """The message is durably committed as ``queue_id`` for ``ctx.recipients`` (the final list),
        just before the client gets its ``250``. Keep it quick; the result is ignored and an
        exception is only logged (the message is accepted either way)."""

    async def on_abort(self, ctx: "Context") -> None:
        """The transaction ended without a commit: RSET, a new EHLO, QUIT, a lost or timed-out
        connection, a refusal at MAIL or DATA, a store failure. Give back what earlier hooks
        reserved. Called at most once per transaction, never after a commit; the result is ignored
        and an exception is only logged."""

    async def after_delivery(self, ctx: "Context", recipient: str, upstream: str | None) -> None:
        """A recipient was delivered (counters only: the result is ignored).

        Here ``ctx`` describes the stored message: ``listener == "delivery"``, ``mail_from``,
        ``recipients``, and ``extra`` with ``queue_id``, ``account_id``, ``ip_pool``, ``source``."""

    async def after_bounce(self, ctx: "Context", recipient: str, reply: str, hard: bool) -> None:
        """A recipient bounced (5xx, or expired after retries); ``hard`` for a permanent address
        failure (5.1.x, 5.2.1), which the bounce stage has already recorded in the suppression book
        (when an enabled policy provides one).
        Counters only; ``ctx`` as in :meth:`after_delivery`."""


    async def usage(self, account_id: str, now: "dt.datetime") -> list[dict[str, Any]] | None:
        """``GET /api/v1/usage``: the account's limits with what is used and left today (a list of
        ``{target, kind, label, rate, available_now, daily, used_today, remaining_today, warmup_day,
        warmup_cap}``). A policy that limits nothing per account returns None or does not define it."""


HOOKS = ("on_connect", "on_mail", "on_rcpt", "on_data", "on_commit", "on_abort", "after_delivery", "after_bounce",
         "usage")
ENTRY_POINT_GROUP = "relay.policies"
COMMANDS_ENTRY_POINT_GROUP = "relay.commands"
DRY_RUN = "dry_run"
SIZE = "size"


def option_error(policy: str, key: str, value: Any, expected: str) -> str:
    """The ConfigError text for a bad ``[policies.<policy>]`` key, in the config loader's format."""
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return f"config: policies.{policy}.{key}: invalid value {shown} ({expected})"
