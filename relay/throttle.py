"""AUTH failure counting per client address (and per address and username), with a lockout (pure,
clock injected). Never per username alone: the documented username ``apikey`` (or an account's
name) is shared, and failures from one address must not lock out a correct key from another."""

from __future__ import annotations

import time
from typing import Callable


class AuthThrottle:
    """``max_failures`` failures within ``window`` seconds from one address lock that address out for
    ``lockout`` (also counted per address and username, which locks that pair alone)."""

    def __init__(self, max_failures: int, lockout: float, *, window: float | None = None,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = window or lockout
        self.clock = clock
        self.max_entries = max_entries
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, first failure time)
        self._locked: dict[str, float] = {}  # key -> locked until

    def apply(self, max_failures: int, lockout: float) -> None:
        """A reload: new limits for the next failures (the window is the lockout)."""
        self.max_failures, self.lockout, self.window = max_failures, lockout, lockout

    @staticmethod
    def _keys(ip: str, username: str) -> tuple[str, ...]:
        return (f"ip:{ip}", f"ip:{ip}/user:{username.lower()}") if username else (f"ip:{ip}",)

    def locked(self, ip: str, username: str = "") -> bool:
        now = self.clock()
        for key in self._keys(ip, username):
            until = self._locked.get(key)
            if until is not None:
                if until > now:
                    return True
                del self._locked[key]
        return False

    def failure(self, ip: str, username: str = "") -> bool:
        """Count one failure; True when it trips the lockout."""
        now = self.clock()
        if len(self._failures) > self.max_entries:
            self._failures = {k: v for k, v in self._failures.items() if now - v[1] < self.window}
        tripped = False
        for key in self._keys(ip, username):
            count, first = self._failures.get(key, (0, now))
            if now - first >= self.window:
                count, first = 0, now
            count += 1
            self._failures[key] = (count, first)
            if count >= self.max_failures:
                self._locked[key] = now + self.lockout
                self._failures.pop(key, None)
                tripped = True
        return tripped

    def success(self, ip: str, username: str = "") -> None:
        for key in self._keys(ip, username):
            self._failures.pop(key, None)


class ConnectionLimits:
    """Open SMTP connections, in all and per client IP, across the listeners of one process."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def open(self, ip: str) -> bool:
        """Count a new connection; False (and nothing counted) when it is over a limit."""
        n = self._per_ip.get(ip, 0)
        if self.total >= self.max_total or n >= self.max_per_ip:
            return False
        self.total += 1
        self._per_ip[ip] = n + 1
        return True

    def close(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0) - 1
        if n <= 0:
            self._per_ip.pop(ip, None)
        else:
            self._per_ip[ip] = n
        self.total -= 1


class MemoryBudget:
    """Bytes that transfers in flight may hold, across the listeners of one process: each SMTP DATA
    reserves what its message may grow to (``smtp.max_message_size``) before its 354 and gives it
    back when the transaction ends, however it ends. Over the budget, a new DATA is refused (452)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take *size* bytes; False (and nothing taken) when fewer are left."""
        if self.used + size > self.total:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size
