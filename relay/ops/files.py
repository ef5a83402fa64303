"""The data directory is private: 0700, and what Relay writes there 0600, whatever the umask."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_process() -> None:
    """From here on, every file and directory this process creates is readable by its owner only
    (the SQLite database and its WAL, journals, node id, generated certificate)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) as 0700; an existing one of ours is tightened to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a directory the operator owns and set up: theirs to decide
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)


def private_file(path: Path) -> None:
    """Tighten an existing file of ours to 0600 (a database created by an older version)."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
