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
import importlib.metadata
import re
from collections.abc import Iterator

import uvicorn

__all__ = ["LIBRARY", "SUPPORTED", "Server", "check"]

#: The distribution whose version :func:`check` reads.
LIBRARY = "uvicorn"
#: uvicorn 0.29 introduced ``Server.capture_signals``; written and tested against 0.55.
SUPPORTED = ">=0.29,<0.56"
_LOWEST = (0, 29)
_BELOW = (0, 56)


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of ``version`` ("0.55.0" -> (0, 55, 0); "0.56.0rc1" -> (0, 56, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def check() -> str:
    """The installed uvicorn version; RuntimeError naming it when it is outside :data:`SUPPORTED`."""
    try:
        installed = importlib.metadata.version(LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        installed = "(not installed)"
    if not _LOWEST <= _release(installed) < _BELOW:
        raise RuntimeError(
            f"{LIBRARY} {installed} is installed, but Relay's HTTP API overrides a uvicorn internal "
            f"written for {LIBRARY}{SUPPORTED} (relay/ops/uvicorn_compat.py)"
        )
    return installed


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that leaves the process's signal handlers alone: the gateway owns the
    signals and stops the API itself (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
