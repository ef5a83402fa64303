"""The dot journal: which final dots this process has let go, written the moment they go.

A delivery's outcome reaches the store a round trip and a commit after the upstream took the
message. A crash in between must not send a second copy, so the process notes each released dot
here first: one ``write(2)`` to an append-only file, no flush. Once ``write`` returns the record is
in the kernel's page cache and outlives the process (SIGKILL, OOM kill); a power cut is the only
thing that loses it, and then the worst case is a duplicate, never a loss.

The record is written right AFTER the dot is committed - from then on even a crash sends it - and
before it is uncorked (see relay.delivery.dotgate): a crash between the two system calls
can at worst send a second copy, never drop a message that was marked as sent. Each record names
the recipient's attempt number; at start, :meth:`Queue.recover` resolves a record only while the
store still shows that attempt unfinished, so records of attempts whose
outcome was written (delivered, or deferred by a 4xx after the dot) never count twice.

Files are per owner (node and worker): ``<dir>/<owner>.<generation>.dots``. A generation is
retired once it is over ``rotate_bytes`` and deleted once every attempt it recorded has its
outcome committed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from relay.ops.files import private_dir

Entry = tuple[str, str, int]  # queue id, recipient, attempt number (attempts before this one)


class DotJournal:
    def __init__(self, directory: Path, owner: str, *, rotate_bytes: int = 1 << 20) -> None:
        self.directory = directory
        self.owner = owner
        self.rotate_bytes = rotate_bytes
        self._pattern = re.compile(re.escape(owner) + r"\.(\d+)\.dots")
        self._fd: int | None = None
        self._gen = 0
        self._size = 0
        self._outstanding: dict[int, int] = {}  # generation -> attempts recorded and not yet settled

    @classmethod
    def orphans(cls, directory: Path, node: str, workers: int) -> tuple[DotJournal, ...]:
        """Journals of this node's workers numbered ``workers`` or above: left by a run with more
        workers than this one has (worker 0 recovers them at start)."""
        owners = set()
        if directory.is_dir():
            pat = re.compile(re.escape(node) + r"\.w(\d+)\.\d+\.dots")
            owners = {f"{node}.w{mt.group(1)}" for p in directory.iterdir()
                      if (mt := pat.fullmatch(p.name)) and int(mt.group(1)) >= workers}
        return tuple(cls(directory, o) for o in sorted(owners))

    # -- reading (start and stop) --------------------------------------------------------------
    def _generations(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        return sorted((int(mt.group(1)), p) for p in self.directory.iterdir() if (mt := self._pattern.fullmatch(p.name)))

    def files(self) -> list[Path]:
        return [p for _, p in self._generations()]

    def entries(self) -> list[Entry]:
        """Every record in this owner's files (a torn last line, from a crash mid-write, is skipped)."""
        out: list[Entry] = []
        for path in self.files():
            for line in path.read_bytes().split(b"\n"):
                parts = line.split(b"\t")
                if len(parts) == 3 and parts[2].isdigit():
                    out.append((parts[0].decode(), parts[1].decode("utf-8", "surrogateescape"), int(parts[2])))
        return out

    def reset(self) -> None:
        """After the store has resolved :meth:`entries`: start afresh."""
        self.close()
        for path in self.files():
            path.unlink(missing_ok=True)
        self._outstanding.clear()
        self._gen = 0

    # -- writing (hot path, event loop thread) -----------------------------------------------------
    def prepare(self, entries: Iterable[Entry]) -> tuple[Callable[[], int], int]:
        """The write that notes released dots, as a C callable (``functools.partial`` of ``os.write``:
        relay.delivery.dotgate.DotGate.release runs it in one C call chain with the release), and the
        generation to :meth:`settle` once the attempt's outcome is committed."""
        data = b"".join(f"{qid}\t{addr}\t{n}\n".encode("utf-8", "surrogateescape") for qid, addr, n in entries)
        if self._fd is None or self._size >= self.rotate_bytes:
            self._rotate()
        self._size += len(data)
        self._outstanding[self._gen] = self._outstanding.get(self._gen, 0) + 1
        return functools.partial(os.write, self._fd, data), self._gen  # type: ignore[arg-type]

    def settle(self, gen: int) -> None:
        left = self._outstanding.get(gen, 0) - 1
        if left > 0:
            self._outstanding[gen] = left
            return
        self._outstanding.pop(gen, None)
        if gen != self._gen:
            self._path(gen).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _path(self, gen: int) -> Path:
        return self.directory / f"{self.owner}.{gen}.dots"

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            if not self._outstanding.get(self._gen):
                self._path(self._gen).unlink(missing_ok=True)
            self._gen += 1
        else:
            private_dir(self.directory)
            self._gen = max((g for g, _ in self._generations()), default=-1) + 1
        self._fd = os.open(self._path(self._gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0
