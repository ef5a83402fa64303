"""IP pools -> their upstreams, in delivery order, with a circuit breaker per upstream.

Order: healthy upstreams of the best priority first, weighted-random among equals; then the next
priority. An upstream that failed ``threshold`` times in a row is skipped until ``cooldown`` has
passed; then one attempt probes it (half-open), and a success closes the breaker again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from relay.delivery.policy import weighted_order
from relay.delivery.target import DeliveryTarget

log = logging.getLogger(__name__)


@dataclass
class Breaker:
    failures: int = 0
    open_until: float = 0.0
    probing: float = 0.0  # when a half-open probe started (0: none)


class Router:
    def __init__(self, *, threshold: int = 3, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.ip_pools: Mapping[str, Sequence[DeliveryTarget]] = {}
        self.owners: Mapping[str, str | None] = {}  # pool -> the account that owns it (None: the operator)
        self.breakers: dict[str, Breaker] = {}

    def set_ip_pools(self, pools: Mapping[str, Sequence[DeliveryTarget]],
                  owners: Mapping[str, str | None] | None = None) -> None:
        self.ip_pools = pools
        self.owners = owners or {}
        for ups in pools.values():
            for u in ups:
                self.breakers.setdefault(u.cfg.id, Breaker())

    def all_upstreams(self) -> list[DeliveryTarget]:
        return [u for ups in self.ip_pools.values() for u in ups]

    def healthy(self, up: DeliveryTarget) -> bool:
        """Closed breaker, or open one whose cooldown is over and that no delivery is probing yet."""
        b = self.breakers[up.cfg.id]
        if b.failures < self.threshold:
            return True
        now = self.clock()
        return now >= b.open_until and (not b.probing or now - b.probing > self.cooldown)

    def order(self, pool: str, account_id: str | None = None, upstream_id: str | None = None) -> list[DeliveryTarget]:
        """The upstreams to try for mail of ``account_id`` in ``pool`` (only ``upstream_id`` when the
        message chose one): none when the pool is another account's (the last guard: an account's
        upstream never carries anyone else's mail)."""
        owner = self.owners.get(pool)
        if owner is not None and owner != account_id:
            log.warning("mail refused by an account's IP pool", extra={"pool": pool, "account_id": account_id})
            return []
        ups = sorted((u for u in self.ip_pools.get(pool, []) if upstream_id is None or u.cfg.id == upstream_id),
                     key=lambda u: u.cfg.priority)
        out: list[DeliveryTarget] = []
        for _, group in groupby(ups, key=lambda u: u.cfg.priority):
            members = [u for u in group if self.healthy(u)]
            for u in members:
                b = self.breakers[u.cfg.id]
                if b.failures >= self.threshold:
                    b.probing = self.clock()  # half-open: this delivery probes it; the others skip it
            out.extend(weighted_order(members, [u.cfg.weight for u in members]))
        return out

    def probed(self, pool: str) -> bool:
        """Every upstream of ``pool`` can be probed without mail (a session pool): its waiting mail
        may be parked until a probe succeeds."""
        ups = self.ip_pools.get(pool, [])
        return bool(ups) and all(hasattr(u, "connect") for u in ups)

    def due_probes(self) -> list[tuple[str, DeliveryTarget]]:
        """(pool, upstream) whose breaker is open, cooldown over, no probe under way; each is marked
        as being probed (half-open) by the caller's connection test."""
        now = self.clock()
        out = []
        for pool, ups in self.ip_pools.items():
            for u in ups:
                b = self.breakers[u.cfg.id]
                if b.failures >= self.threshold and now >= b.open_until and hasattr(u, "connect") and \
                        (not b.probing or now - b.probing > self.cooldown):
                    b.probing = now
                    out.append((pool, u))
        return out

    def reopens_in(self, pool: str) -> float | None:
        """When :meth:`order` gave nothing for *pool* because every breaker is open: seconds until
        the first of them lets a probe through. None when the pool has no upstream, or when a probe
        is already under way (its outcome decides)."""
        ups = self.ip_pools.get(pool, [])
        if not ups:
            return None
        now = self.clock()
        waits = []
        for u in ups:
            b = self.breakers[u.cfg.id]
            if b.failures < self.threshold or (b.probing and now - b.probing <= self.cooldown):
                return None
            waits.append(max(0.0, b.open_until - now))
        return min(waits)

    def success(self, up: DeliveryTarget) -> bool:
        """Close ``up``'s breaker; True when it was open (the upstream is back up)."""
        b = self.breakers[up.cfg.id]
        was_open = b.failures >= self.threshold
        if was_open:
            log.info("upstream back up", extra={"upstream": up.name})
        b.failures, b.open_until, b.probing = 0, 0.0, 0.0
        return was_open

    def failure(self, up: DeliveryTarget) -> None:
        b = self.breakers[up.cfg.id]
        b.failures += 1
        b.probing = 0.0
        if b.failures >= self.threshold:
            if b.failures == self.threshold:
                log.warning("upstream marked down", extra={"upstream": up.name, "failures": b.failures})
            b.open_until = self.clock() + self.cooldown
