"""One upstream relay as a delivery target: its session pool (relay.delivery.connections) and the
transaction (relay.delivery.transaction).

This is what the router orders and the scheduler sends through (relay.delivery.target); the
names other modules import from here stay here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.delivery.commands import (
    envelope as _envelope,  # tests/test_fuzz.py compares it with aiosmtplib
)
from relay.delivery.connections import SessionPool, UpstreamConfig
from relay.delivery.target import (
    DeliveryTarget,
    DotHooks,
    OnDot,
    TransactionResult,
    UpstreamUnavailable,
)
from relay.delivery.transaction import StaleSession, transact

__all__ = ["DotHooks", "TransactionResult", "Upstream", "UpstreamConfig", "UpstreamUnavailable", "_envelope"]


class Upstream(SessionPool):
    """An SMTP relay behind a bounded pool of persistent sessions."""

    async def send(self, mail_from: str, recipients: list[str], body: bytes, on_dot: OnDot) -> TransactionResult:
        """One transaction on a pooled session. A stale reused session is replaced once, silently."""
        async with self.slots:
            for attempt in (0, 1):
                session = await self.acquire()
                fresh = session.used == 0
                try:
                    result = await transact(session, mail_from, recipients, body, on_dot,
                                            upstream=self.cfg.name, timeout=self.command_timeout)
                except StaleSession:
                    self.discard(session)
                    if fresh or attempt:
                        raise UpstreamUnavailable(None, "connection lost") from None
                    continue
                except BaseException:  # refused, failed or cancelled: the session's state is unknown
                    self.discard(session)
                    raise
                session.used += 1
                self.release(session, True)
                return result
        raise AssertionError("unreachable")


if TYPE_CHECKING:
    def _is_a_target(up: Upstream) -> DeliveryTarget:
        return up
