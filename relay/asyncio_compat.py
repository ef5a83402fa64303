"""The only module that reads or writes private attributes of :class:`asyncio.StreamReader`, and
the only one that builds asyncio's (non-public) ``sslproto.SSLProtocol``.

The SMTP front door needs three things asyncio has no public API for: whether a reader is parked
waiting for the client's next bytes with nothing buffered (a session that is idle, for the
graceful shutdown), and the reader's buffer limit, read and changed for one DATA transfer (the
block reader of :mod:`relay.smtp.data`). These are ``StreamReader._waiter``, ``._buffer`` and
``._limit`` in CPython's ``asyncio/streams.py``, unchanged from 3.8 through 3.13; the helpers below
are written for the Python versions in :data:`SUPPORTED`, which :func:`check` verifies at start-up.

Implicit TLS (465) is served by :func:`tls_server_protocol`, asyncio's own ``SSLProtocol`` (as
aiosmtpd builds for STARTTLS) in front of the session: ``create_server(ssl=...)`` and
``loop.start_tls()`` drop or lose a failed handshake without a word (uvloop starts reading only
after ``connection_made``, so a protocol cannot hold the ClientHello back for ``start_tls``); here
the handshake's waiter tells the caller why it failed, and the session sees only a TLS transport.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

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


class _TLSServer(sslproto.SSLProtocol):
    """asyncio's SSLProtocol, remembering the peer (its transport is gone when a handshake failure is told)."""

    peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)


def tls_server_protocol(app_protocol: asyncio.BaseProtocol, context: ssl.SSLContext, *, timeout: float,
                        on_failure: Callable[[Any, BaseException], None]) -> asyncio.BaseProtocol:
    """A server-side TLS layer for one accepted connection: *app_protocol* gets ``connection_made``
    with the TLS transport once the handshake is done; if it fails, ``on_failure(peername, exc)`` is
    called instead (and *app_protocol* hears nothing)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    protocol = _TLSServer(loop, app_protocol, context, waiter, server_side=True, ssl_handshake_timeout=timeout)

    def done(fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        assert exc is not None
        on_failure(protocol.peer, exc)

    waiter.add_done_callback(done)
    return protocol


__all__ = ["SUPPORTED", "check", "installed_version", "set_stream_limit", "stream_limit", "tls_server_protocol",
           "waiting_for_data"]
