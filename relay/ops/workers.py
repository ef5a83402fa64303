"""Forked workers (``smtp.workers > 1``): the parent supervises, the children report in.

The parent is systemd's main process. Each worker writes its index to a shared pipe once its
gateway has started, then again every heartbeat. The parent says ``READY=1`` when every worker has
reported, pings the watchdog only while every worker keeps beating (a hung worker stops the pings,
and systemd restarts the service), forwards SIGTERM, SIGINT and SIGHUP, and if a worker dies
unexpectedly stops the others and exits non-zero (``Restart=on-failure`` brings the service back).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import Any

from relay.ops.notify import notify, watchdog_interval

__all__ = ["WorkerLink", "supervise"]

log = logging.getLogger(__name__)


class WorkerLink:
    """A worker's end of the pipe to the parent."""

    def __init__(self, fd: int, index: int, beat: float | None) -> None:
        self.fd, self.index, self.beat = fd, index, beat

    def report(self) -> None:
        try:
            os.write(self.fd, bytes([self.index]))
        except OSError:  # the parent is gone; systemd deals with it
            pass


def supervise(pids: dict[int, int], read_fd: int, *, beat: float | None) -> int:
    """Run the parent until every worker has exited; returns the exit status for ``relay serve``.

    *pids* maps child pid -> worker index; *beat* is the heartbeat interval the workers were given
    (the watchdog interval, None without a watchdog).
    """
    n = len(pids)
    alive = dict(pids)
    ready: set[int] = set()
    beats: dict[int, float] = {}
    state = {"stopping": False, "status": 0}

    def forward(signum: int) -> None:
        for pid, index in alive.items():
            if signum != signal.SIGHUP or index in ready:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def on_stop(signum: int, _frame: Any) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            notify("STOPPING=1")
        forward(signum)

    def on_hup(signum: int, _frame: Any) -> None:
        forward(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    announced = False
    last_ping = 0.0
    while alive:
        try:
            readable, _, _ = select.select([read_fd], [], [], min(beat or 1.0, 1.0))
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            readable = []
        now = time.monotonic()
        if readable:
            for index in os.read(read_fd, 4096):
                ready.add(index)
                beats[index] = now
        if not announced and len(ready) == n and not state["stopping"]:
            announced = notify("READY=1", f"STATUS=Relay: {n} workers serving") or True
        if beat and announced and now - last_ping >= beat:
            if all(now - beats.get(i, 0.0) < 2 * beat for i in alive.values()):
                notify("WATCHDOG=1")
                last_ping = now
        while alive:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                alive.clear()
                break
            if pid == 0:
                break
            index = alive.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code:
                state["status"] = state["status"] or (code if code > 0 else 1)
            if not state["stopping"]:
                log.error("worker exited unexpectedly; stopping the others", extra={"worker": index, "status": code})
                state["stopping"] = True
                state["status"] = state["status"] or 1
                notify("STOPPING=1")
                forward(signal.SIGTERM)
    os.close(read_fd)
    return int(state["status"])


def beat_interval() -> float | None:
    """The workers' heartbeat: the watchdog interval of the parent (None: no watchdog)."""
    return watchdog_interval()
