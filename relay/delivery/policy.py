"""Pure delivery decisions: the retry schedule, reply classification, upstream ordering."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def backoff(attempts: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failed tries: exponential, capped, with jitter.

    Full jitter on the upper half (delay in [d/2, d]) keeps retries spread without ever waiting
    less than half the nominal delay.
    """
    d = min(cap, base * (2 ** max(0, attempts - 1)))
    r = (rand or random).random()
    return d / 2 + r * d / 2


def outcome_of(code: int) -> str:
    """2xx delivered, 4xx deferred, 5xx bounced."""
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "bounced"
    return "deferred"


def is_hard_bounce(code: int, reply: str) -> bool:
    """A permanent failure about the address itself (5.1.x, 5.2.1): suppress it for the account."""
    if not 500 <= code < 600:
        return False
    esc = reply.split(" ", 1)[0] if reply else ""
    if esc.startswith("5.1.") or esc == "5.2.1":
        return True
    return code in (550, 551, 553) and not esc.startswith(("5.7.", "5.3.", "5.4.", "5.6."))


def weighted_order(items: Sequence[T], weights: Sequence[int], rand: random.Random | None = None) -> list[T]:
    """A random order where heavier items tend to come first (weighted sampling without replacement)."""
    r = rand or random
    keyed = [(r.random() ** (1.0 / max(w, 1)), i) for i, w in enumerate(weights)]
    keyed.sort(reverse=True)
    return [items[i] for _, i in keyed]
