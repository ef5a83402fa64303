"""Pure quota logic (no I/O): rate and warm-up syntax, targets of a submission, effective limits.

A *target* is what a limit is counted against, as a string:

``account:<account id>``            every submission of the account
``key:<api key id>``                submissions authenticated with that key
``alias:<alias id>``                submissions from that sender alias
``pool:<ip pool>``                  everything sent through the IP pool (all accounts): warm-up lives here
``account_pool:<account id>/<pool>``  the account's share of one IP pool

A limit has a *rate* (``N/s``, ``N/m`` or ``N/h``: a token bucket holding at most N tokens, refilled
continuously at N per period, so a burst of N is allowed and then N per period) and a *daily* cap
(per UTC day). A pool's *warm-up* schedule maps day N of the pool's life to a daily cap. The unit is
one recipient. ``None`` means "not set here" (inherit the default), ``UNLIMITED`` (-1) means no limit.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

UNLIMITED = -1
KINDS = ("account", "key", "alias", "pool", "account_pool")
PERIODS = {"s": 1, "m": 60, "h": 3600}
_PERIOD_WORDS = {"s": "s", "sec": "s", "second": "s", "m": "m", "min": "m", "minute": "m", "h": "h", "hour": "h"}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")

RATE_EXPECTED = "expected N/s, N/m or N/h (per second, minute or hour)"
WARMUP_EXPECTED = 'expected "day:cap,day:cap,..." with increasing days from 1, e.g. "1:50,2:100,3:500"'


@dataclass(frozen=True)
class Rate:
    count: int
    per: int  # seconds: 1, 60 or 3600

    @property
    def refill(self) -> float:
        """Tokens per second."""
        return self.count / self.per

    def __str__(self) -> str:
        unit = {v: k for k, v in PERIODS.items()}[self.per]
        return f"{self.count}/{unit}"


def parse_rate(text: Any) -> Rate:
    """``"10/s"``, ``"600/m"``, ``"5000/h"`` (also ``/sec``, ``/minute``, ``/hour``). ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(RATE_EXPECTED)
    m = _RATE.match(text.lower())
    if not m or m.group(2) not in _PERIOD_WORDS:
        raise ValueError(RATE_EXPECTED)
    return Rate(int(m.group(1)), PERIODS[_PERIOD_WORDS[m.group(2)]])


Warmup = tuple[tuple[int, int], ...]


def parse_warmup(value: Any) -> Warmup:
    """``"1:50,2:100,5:2000"`` or ``[[1, 50], [2, 100]]`` -> ((1, 50), (2, 100), ...). ValueError otherwise."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(","))):
            day, sep, cap = part.partition(":")
            if not sep:
                raise ValueError(WARMUP_EXPECTED)
            pairs.append((day.strip(), cap.strip()))
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(WARMUP_EXPECTED)
            pairs.append((item[0], item[1]))
    else:
        raise ValueError(WARMUP_EXPECTED)
    out: list[tuple[int, int]] = []
    for day, cap in pairs:
        try:
            d, c = int(day), int(cap)
        except (TypeError, ValueError):
            raise ValueError(WARMUP_EXPECTED) from None
        if isinstance(day, bool) or isinstance(cap, bool) or d < 1 or c < 0 or (out and d <= out[-1][0]):
            raise ValueError(WARMUP_EXPECTED)
        out.append((d, c))
    if not out:
        raise ValueError(WARMUP_EXPECTED)
    return tuple(out)


def format_warmup(schedule: Warmup | None) -> str:
    return ",".join(f"{d}:{c}" for d, c in schedule) if schedule else ""


def pool_day(start: dt.date, today: dt.date) -> int:
    """Day N of a pool's life: its first UTC day is day 1."""
    return (today - start).days + 1


def warmup_cap(schedule: Warmup | None, day: int) -> int | None:
    """The cap of the last scheduled day <= ``day`` (the first entry's before it), or None once the
    schedule is over (after its last listed day)."""
    if not schedule or day > schedule[-1][0]:
        return None
    cap = None
    for d, c in schedule:
        if d <= day:
            cap = c
        else:
            break
    return schedule[0][1] if cap is None else cap


@dataclass(frozen=True)
class LimitSpec:
    """A limit as stored or configured: fields None inherit, UNLIMITED lifts."""

    rate: Rate | None | int = None  # Rate, None (inherit) or UNLIMITED
    daily: int | None = None
    warmup: Warmup | None = None
    warmup_start: dt.date | None = None


@dataclass(frozen=True)
class Effective:
    """What one target allows right now."""

    target: str
    kind: str
    rate: Rate | None
    daily: int | None  # including the warm-up cap of today
    warmup_day: int | None = None  # day N of the pool's life when a warm-up cap applies today
    warmup_cap: int | None = None
    warmup_schedule: tuple[tuple[int, int], ...] | None = None  # (day, cap) of the whole warm-up

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.daily is not None


def targets(account_id: str, key_id: str | None, alias_id: str | None, pool: str | None) -> list[tuple[str, str]]:
    """(kind, target) for one submission, in a fixed order."""
    out = [("account", f"account:{account_id}")]
    if key_id:
        out.append(("key", f"key:{key_id}"))
    if alias_id:
        out.append(("alias", f"alias:{alias_id}"))
    if pool:
        out.append(("pool", f"pool:{pool}"))
        out.append(("account_pool", f"account_pool:{account_id}/{pool}"))
    return out


def effective(kind: str, target: str, row: LimitSpec | None, default: LimitSpec | None, *,
              today: dt.date, pool_start: dt.date | None) -> Effective:
    """Merge a stored limit over the configured default; apply today's warm-up cap (pool kinds)."""
    row = row or LimitSpec()
    default = default or LimitSpec()
    rate = row.rate if row.rate is not None else default.rate
    daily = row.daily if row.daily is not None else default.daily
    schedule = row.warmup if row.warmup is not None else default.warmup
    rate = None if rate is None or rate == UNLIMITED else rate
    daily = None if daily is None or daily == UNLIMITED else daily
    wday = wcap = None
    plan = None
    if schedule and kind in ("pool", "account_pool"):
        start = row.warmup_start or pool_start
        if start is not None:
            day = pool_day(start, today)
            cap = warmup_cap(schedule, day) if day >= 1 else schedule[0][1]
            if cap is not None:
                wday, wcap, plan = day, cap, tuple((int(d), int(c)) for d, c in schedule)
                daily = cap if daily is None else min(daily, cap)
    assert rate is None or isinstance(rate, Rate)
    return Effective(target, kind, rate, daily, wday, wcap, plan)


def parse_defaults(options: Mapping[str, Any], policy: str = "quota") -> dict[str, LimitSpec]:
    """``[policies.quota]`` keys ``<kind>_rate``, ``<kind>_daily`` and ``pool_warmup`` -> per-kind
    defaults. Raises ValueError("<key>: <message>") on the first bad key."""
    out: dict[str, LimitSpec] = {}
    for kind in ("account", "key", "alias", "pool"):
        rate = daily = warmup = None
        if f"{kind}_rate" in options:
            try:
                rate = parse_rate(options[f"{kind}_rate"])
            except ValueError as exc:
                raise KeyedError(f"{kind}_rate", options[f"{kind}_rate"], str(exc)) from None
        if f"{kind}_daily" in options:
            value = options[f"{kind}_daily"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise KeyedError(f"{kind}_daily", value, "expected an integer >= 0")
            daily = value
        if kind == "pool" and "pool_warmup" in options:
            try:
                warmup = parse_warmup(options["pool_warmup"])
            except ValueError as exc:
                raise KeyedError("pool_warmup", options["pool_warmup"], str(exc)) from None
        if rate is not None or daily is not None or warmup is not None:
            out[kind] = LimitSpec(rate, daily, warmup)
    return out


class KeyedError(ValueError):
    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(expected)
        self.key, self.value, self.expected = key, value, expected


def recipients_left(reserved: Iterable[str], accepted: Sequence[str]) -> list[int]:
    """Indexes of reservations (one per RCPT, in order) whose recipient is not among the accepted
    ones, counting duplicates: those must be given back."""
    pool: dict[str, int] = {}
    for r in accepted:
        pool[r] = pool.get(r, 0) + 1
    out = []
    for i, r in enumerate(reserved):
        if pool.get(r, 0) > 0:
            pool[r] -= 1
        else:
            out.append(i)
    return out
