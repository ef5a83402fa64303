"""The only module that reads or writes private attributes of :class:`asyncio.StreamReader`.

The SMTP front door needs three things asyncio has no public API for: whether a reader is parked
waiting for the client's next bytes with nothing buffered (a session that is idle, for the
graceful shutdown), and the reader's buffer limit, read and changed for one DATA transfer (the
block reader of :mod:`relay.smtp.data`). These are ``StreamReader._waiter``, ``._buffer`` and
``._limit`` in CPython's ``asyncio/streams.py``, unchanged from 3.8 through 3.13; the helpers below
are written for the Python versions in :data:`SUPPORTED`, which :func:`check` verifies at start-up.
"""

from __future__ import annotations

import asyncio
import sys

from relay.vocab import ConfigError

#: The Python minor versions (first, last; both included) whose StreamReader these helpers know.
SUPPORTED: tuple[tuple[int, int], tuple[int, int]] = ((3, 11), (3, 13))


def installed_version() -> tuple[int, int]:
    """The running Python's (major, minor): asyncio is part of it."""
    return (sys.version_info[0], sys.version_info[1])


def check() -> None:
    """Refuse to start on a Python whose asyncio these helpers were not written for."""
    version = installed_version()
    low, high = SUPPORTED
    if not low <= version <= high:
        raise ConfigError(
            f"asyncio: Python {version[0]}.{version[1]} is installed; relay.asyncio_compat reads "
            f"StreamReader internals known for Python {low[0]}.{low[1]} to {high[0]}.{high[1]} only")


def waiting_for_data(reader: asyncio.StreamReader) -> bool:
    """The reader is parked in a read with an empty buffer: the peer has sent nothing unread."""
    return getattr(reader, "_waiter", None) is not None and not getattr(reader, "_buffer", b"")


def stream_limit(reader: asyncio.StreamReader) -> int | None:
    """The reader's buffer limit (``readuntil`` raises LimitOverrunError past it); None if unknown."""
    limit = getattr(reader, "_limit", None)
    return limit if isinstance(limit, int) else None


def set_stream_limit(reader: asyncio.StreamReader, limit: int) -> None:
    """Change the reader's buffer limit in place (for one transfer; the caller restores it)."""
    reader._limit = limit  # type: ignore[attr-defined]


__all__ = ["SUPPORTED", "check", "installed_version", "set_stream_limit", "stream_limit", "waiting_for_data"]
