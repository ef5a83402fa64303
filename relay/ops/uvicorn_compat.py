"""The uvicorn internals the gateway builds on, and the uvicorn versions they fit.

``relay serve`` owns the process's signals (SIGTERM/SIGINT stop it gracefully, SIGHUP reloads) and
runs the HTTP API in the same event loop. ``uvicorn.Server.serve()`` installs its own SIGINT/SIGTERM
handlers around the server, in ``Server.capture_signals()`` (since uvicorn 0.29, "cooperative signal
handling"), and raises the signals it caught again once it is done. That method is not documented
API; :class:`Server` overrides it here and nowhere else, and :func:`check` runs at start-up and
refuses a uvicorn outside :data:`SUPPORTED`. tests/unit/ops/test_uvicorn_compat.py serves with both classes
and checks that only uvicorn's own touches the signal handlers.

uvicorn bounds a request's headers in size (h11's ``max_incomplete_event_size``: 400 past it) but not
in time: a connection that has not sent a whole request line and headers is held for as long as
bytes trickle in (or none come); its keep-alive timer runs only between requests. The slow-loris
client is cut by :func:`header_timeout_protocol`, a subclass of uvicorn's h11 protocol (its
``connection_made``/``data_received``/``connection_lost`` and ``conn``/``transport``/``loop``
attributes, not documented API either) that closes a connection whose client still owes a request's
headers ``timeout`` seconds after the connection opened or that request's first byte came.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from relay.ops.versions import require

__all__ = ["LIBRARY", "MAX_HEADER_BYTES", "SUPPORTED", "Server", "check", "header_timeout_protocol"]

#: The distribution whose version :func:`check` reads.
LIBRARY = "uvicorn"
#: uvicorn 0.29 introduced ``Server.capture_signals``; written and tested against 0.55.
SUPPORTED = ">=0.29,<0.56"
_LOWEST = (0, 29)
_BELOW = (0, 56)
#: A request line and headers larger than this are answered 400 (h11's own default, made explicit).
MAX_HEADER_BYTES = 16 * 1024


def check() -> str:
    """The installed uvicorn version; UnsupportedVersion naming it when it is outside :data:`SUPPORTED`."""
    return require(LIBRARY, _LOWEST, _BELOW, "relay.ops.uvicorn_compat (Server.capture_signals)")


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that leaves the process's signal handlers alone: the gateway owns the
    signals and stops the API itself (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that owes a request's headers for too long."""

    header_timeout = 20.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _follow_headers(self) -> None:
        """Armed while the client owes the next request's headers (h11: their state IDLE), from the
        connection's start or the request's first byte; stopped once they are in."""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)
        else:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 HTTP protocol (for ``uvicorn.Config(http=...)``) with a header timeout of *timeout* seconds."""
    return type("HeaderTimeoutH11", (_HeaderTimeoutH11,), {"header_timeout": timeout})
