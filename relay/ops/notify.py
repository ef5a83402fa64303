"""systemd's notify protocol (``Type=notify``): READY, STOPPING, RELOADING, STATUS and watchdog pings.

A few lines of socket code instead of a dependency: one datagram per notification to the
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that variable (not
under systemd) every call is a no-op. See sd_notify(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "watchdog_interval", "watchdog"]

log = logging.getLogger(__name__)


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1``... in one datagram.

    Returns False (and never raises) when there is no notify socket or it cannot be reached.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError as exc:
        log.debug("sd_notify failed", extra={"error": repr(exc)})
        return False


def reloading() -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that systemd >= 253 expects; READY=1 follows."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``WatchdogSec``), or None when no watchdog is asked for us."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


async def watchdog(interval: float) -> None:
    """Ping from the event loop itself: a loop that hangs stops pinging, and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
