"""Bridge from asyncio to the synchronous store: thread executors and group commit.

Writes go through one executor (one thread on SQLite, the single-writer database); reads through
another, so a slow fsync never stalls a directory lookup. :class:`StoreWriter` is the group commit:
callers await their write; while one round is being written, the next one gathers, and is then
written as one transaction. Durability therefore costs one fsync per batch, not per message.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class DbRunner:
    """``lock_path`` (SQLite with several worker processes): writers of this machine take turns on
    an flock, which hands over at once, instead of SQLite's busy handler, which sleeps 1-100 ms."""

    def __init__(self, dialect: str, lock_path: str | None = None) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1 if dialect == "sqlite" else 4, thread_name_prefix="db-write")
        self._reader = ThreadPoolExecutor(max_workers=2 if dialect == "sqlite" else 4, thread_name_prefix="db-read")
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path else None

    def _locked(self, fn: Callable[[], R]) -> R:
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            return fn()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def write(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if self._lock_fd is not None:
            call = functools.partial(self._locked, call)
        return await loop.run_in_executor(self._writer, call)

    async def read(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class StoreWriter:
    """Group commit for the hot path: new messages, dot markers and outcomes, all together.

    Callers await ``enqueue(msg)``, ``mark(items)`` or ``record(outcomes)``. While one round is being
    written, the next one gathers; a round is ONE transaction (one fsync) whatever it holds. If a
    mixed round fails, each kind is retried on its own so one bad item cannot fail the others.
    """

    KINDS = ("enqueue", "markers", "outcomes")

    def __init__(self, runner: DbRunner, apply: Callable[..., None], *, max_batch: int = 1024,
                 on_commit: Callable[[float, int], None] | None = None) -> None:
        self._runner = runner
        self._apply = apply
        self._max_batch = max_batch
        self._pending: list[tuple[str, Any, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._on_commit = on_commit

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="store-writer")

    async def _submit(self, kind: str, items: Sequence[Any]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, items, fut))
        self._wake.set()
        if self._task is None:
            self.start()
        await fut

    async def enqueue(self, msg: Any) -> None:
        await self._submit("enqueue", [msg])

    async def mark(self, items: Sequence[Any]) -> None:
        """Commit dot markers (the final dot has gone: another node taking over must not resend)."""
        await self._submit("markers", items)

    async def record(self, outcomes: Sequence[Any]) -> None:
        await self._submit("outcomes", outcomes)

    async def _write(self, batch: list[tuple[str, Any, asyncio.Future[None]]]) -> None:
        ops: dict[str, list[Any]] = {k: [] for k in self.KINDS}
        for kind, items, _ in batch:
            ops[kind].extend(items)
        await self._runner.write(self._apply, **ops)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
                started = loop.time()
                self._busy = True
                try:
                    try:
                        await self._write(batch)
                        done = [(batch, None)]
                    except Exception as exc:
                        kinds = {k for k, _, _ in batch}
                        if len(kinds) == 1:
                            done = [(batch, exc)]
                        else:  # retry each kind alone: one bad item must not fail the others
                            done = []
                            for kind in kinds:
                                part = [b for b in batch if b[0] == kind]
                                try:
                                    await self._write(part)
                                    done.append((part, None))
                                except Exception as exc2:
                                    done.append((part, exc2))
                finally:
                    self._busy = False
                if self._on_commit:
                    self._on_commit(loop.time() - started, len(batch))
                for part, exc in done:
                    if exc is not None:
                        log.error("store write failed", extra={"size": len(part), "error": repr(exc)})
                    for _, _, fut in part:
                        if not fut.done():
                            if exc is None:
                                fut.set_result(None)
                            else:
                                fut.set_exception(exc)

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        while self._pending or self._busy:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
