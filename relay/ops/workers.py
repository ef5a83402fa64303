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


class _Supervisor:
    """The parent's state: the workers alive, those that said ready, their last heartbeats."""

    def __init__(self, pids: dict[int, int], beat: float | None) -> None:
        self.n = len(pids)
        self.alive = dict(pids)
        self.beat = beat
        self.ready: set[int] = set()
        self.beats: dict[int, float] = {}
        self.stopping = False
        self.status = 0
        self.announced = False
        self.last_ping = 0.0

    def forward(self, signum: int) -> None:
        for pid, index in self.alive.items():
            if signum != signal.SIGHUP or index in self.ready:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def on_stop(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            notify("STOPPING=1")
        self.forward(signum)

    def on_hup(self, signum: int, _frame: Any) -> None:
        self.forward(signum)

    def heard(self, indexes: bytes, now: float) -> None:
        """Bytes from the workers' pipe: each is a worker index saying ready / alive."""
        for index in indexes:
            self.ready.add(index)
            self.beats[index] = now
        if not self.announced and len(self.ready) == self.n and not self.stopping:
            self.announced = notify("READY=1", f"STATUS=Relay: {self.n} workers serving") or True

    def ping_watchdog(self, now: float) -> None:
        beat = self.beat
        if beat and self.announced and now - self.last_ping >= beat:
            if all(now - self.beats.get(i, 0.0) < 2 * beat for i in self.alive.values()):
                notify("WATCHDOG=1")
                self.last_ping = now

    def reap(self) -> None:
        """Collect exited workers; one that exits unexpectedly stops the others."""
        while self.alive:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.alive.clear()
                return
            if pid == 0:
                return
            index = self.alive.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code:
                self.status = self.status or (code if code > 0 else 1)
            if not self.stopping:
                log.error("worker exited unexpectedly; stopping the others", extra={"worker": index, "status": code})
                self.stopping = True
                self.status = self.status or 1
                notify("STOPPING=1")
                self.forward(signal.SIGTERM)


def supervise(pids: dict[int, int], read_fd: int, *, beat: float | None) -> int:
    """Run the parent until every worker has exited; returns the exit status for ``relay serve``.

    *pids* maps child pid -> worker index; *beat* is the heartbeat interval the workers were given
    (the watchdog interval, None without a watchdog).
    """
    sup = _Supervisor(pids, beat)
    signal.signal(signal.SIGTERM, sup.on_stop)
    signal.signal(signal.SIGINT, sup.on_stop)
    signal.signal(signal.SIGHUP, sup.on_hup)
    while sup.alive:
        try:
            readable, _, _ = select.select([read_fd], [], [], min(beat or 1.0, 1.0))
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            readable = []
        now = time.monotonic()
        if readable:
            sup.heard(os.read(read_fd, 4096), now)
        sup.ping_watchdog(now)
        sup.reap()
    os.close(read_fd)
    return sup.status


def beat_interval() -> float | None:
    """The workers' heartbeat: the watchdog interval of the parent (None: no watchdog)."""
    return watchdog_interval()
