"""The uvicorn internals the gateway builds on, and the uvicorn versions they fit.

``relay serve`` owns the process's signals (SIGTERM/SIGINT stop it gracefully, SIGHUP reloads) and
runs the HTTP API in the same event loop. ``uvicorn.Server.serve()`` installs its own SIGINT/SIGTERM
handlers around the server, in ``Server.capture_signals()`` (since uvicorn 0.29, "cooperative signal
handling"), and raises the signals it caught again once it is done. That method is not documented
API; :class:`Server` overrides it here and nowhere else, and :func:`check` runs at start-up and
refuses a uvicorn outside :data:`SUPPORTED`. tests/unit/ops/test_uvicorn_compat.py serves with both classes
and checks that only uvicorn's own touches the signal handlers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from relay.ops.versions import require

__all__ = ["LIBRARY", "SUPPORTED", "Server", "check"]

#: The distribution whose version :func:`check` reads.
LIBRARY = "uvicorn"
#: uvicorn 0.29 introduced ``Server.capture_signals``; written and tested against 0.55.
SUPPORTED = ">=0.29,<0.56"
_LOWEST = (0, 29)
_BELOW = (0, 56)


def check() -> str:
    """The installed uvicorn version; UnsupportedVersion naming it when it is outside :data:`SUPPORTED`."""
    return require(LIBRARY, _LOWEST, _BELOW, "relay.ops.uvicorn_compat (Server.capture_signals)")


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that leaves the process's signal handlers alone: the gateway owns the
    signals and stops the API itself (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
