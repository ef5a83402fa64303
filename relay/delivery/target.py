"""The delivery target: what the scheduler and the router know of an upstream (maddy's model).

The scheduler hands a target an envelope and a body and gets per-recipient results back; it never
knows the transport. :class:`relay.delivery.upstream.Upstream` is the real one (an SMTP relay
behind a pool of sessions); a test can put any object with these members in its place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


class UpstreamUnavailable(Exception):
    """The upstream did not take the message (connect failure, 421, 4xx/5xx before DATA was accepted,
    drop): nothing was delivered, so the same attempt may try the next upstream."""

    def __init__(self, code: int | None, reply: str, *, permanent: bool = False,
                 refused: dict[str, tuple[int, str]] | None = None) -> None:
        super().__init__(reply)
        self.code = code
        self.reply = reply
        self.permanent = permanent
        self.refused = refused or {}  # recipients this upstream refused for good (5xx at RCPT)


@dataclass
class TransactionResult:
    """Per-recipient (code, reply); ``upstream`` names who answered."""

    upstream: str
    results: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class DotHooks:
    """What the scheduler does the moment a dot goes: ``journal`` is a C callable (a
    functools.partial of os.write) run in the same call chain as the release
    (relay.delivery.dotgate); ``after`` then starts the store's marker, awaited once the reply is in."""

    journal: Callable[[], object]
    after: Callable[[], Awaitable[None] | None]


OnDot = Callable[[list[str]], DotHooks]
"""Called with the accepted recipients just before the final dot goes; gives the hooks for that moment."""


class TargetSettings(Protocol):
    """What the router reads of a target's configuration (an UpstreamConfig has these)."""

    @property
    def id(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def weight(self) -> int: ...


class DeliveryTarget(Protocol):
    """One upstream as the router orders it and the scheduler uses it."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> TargetSettings: ...

    @property
    def idle_timeout(self) -> float: ...

    async def send(self, mail_from: str, recipients: list[str], body: bytes, on_dot: OnDot) -> TransactionResult:
        """One transaction. Returns every recipient's (code, reply) once the upstream has answered
        the final dot (or refused every recipient for good); raises :class:`UpstreamUnavailable` when
        nothing was delivered and another upstream may be tried. ``on_dot`` is called right before
        the final dot goes, and its hooks run as that dot is released."""
        ...

    def close_idle(self, max_idle: float | None = None) -> None:
        """Close sessions idle for ``max_idle`` seconds or more (all idle ones when None)."""
        ...

    def set_timeouts(self, connect: float, command: float) -> None:
        """A reload: the timeouts of the next connections and commands."""
        ...
