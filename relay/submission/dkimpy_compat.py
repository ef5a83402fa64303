"""The dkimpy internals :mod:`relay.submission.dkim` builds on, and the dkimpy versions they fit.

dkimpy's documented API is ``dkim.sign``, ``dkim.verify``, ``dkim.DKIM`` and the other names of
``dkim.__all__``. The signer replaces dkimpy's signing with a faster one but keeps dkimpy's reading
of a message: its parser (``dkim.rfc822_parse``), its header selection (``dkim.select_headers``) and
its relaxed canonicalization (``dkim.canonicalization``). Those are module internals, reached only
here under public names; :func:`check` runs at start-up and refuses a dkimpy outside
:data:`SUPPORTED`. tests/unit/submission/test_dkim.py checks the signer against dkimpy itself, so a dkimpy whose
internals changed meaning is caught there before :data:`SUPPORTED` is widened.
"""

from __future__ import annotations

import dkim
from dkim import canonicalization

from relay.ops.versions import require

__all__ = [
    "LIBRARY",
    "SUPPORTED",
    "check",
    "finish_relaxed_body",
    "parse_message",
    "relaxed_headers",
    "select_headers",
]

#: The distribution whose version :func:`check` reads.
LIBRARY = "dkimpy"
#: The dkimpy versions this module was written for (the pin in pyproject.toml says the same).
SUPPORTED = ">=1.1.5,<1.2"
_LOWEST = (1, 1, 5)
_BELOW = (1, 2)

_RELAXED = canonicalization.CanonicalizationPolicy(canonicalization.Relaxed, canonicalization.Relaxed)


def check() -> str:
    """The installed dkimpy version; UnsupportedVersion naming it when it is outside :data:`SUPPORTED`."""
    return require(LIBRARY, _LOWEST, _BELOW, "relay.submission.dkimpy_compat")


def parse_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse``: ([name, value] per header field, each value ending in CRLF; body).

    Raises dkimpy's ``MessageFormatError`` for a header it cannot read."""
    headers, body = dkim.rfc822_parse(message)
    return headers, body


def relaxed_headers(headers: list[list[bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's relaxed header canonicalization (RFC 6376 3.4.2) of :func:`parse_message`'s fields:
    (lowercased name, canonical value + CRLF) per field."""
    canonical: list[tuple[bytes, bytes]] = _RELAXED.canonicalize_headers(headers)
    return canonical


def select_headers(headers: list[tuple[bytes, bytes]], include: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``dkim.select_headers``: the fields ``include`` (lowercased names) signs, in signing order
    (RFC 6376 5.4.2: the k-th mention of a name is its k-th occurrence from the bottom)."""
    selected: list[tuple[bytes, bytes]] = dkim.select_headers(headers, include)
    return selected


def finish_relaxed_body(body: bytes) -> bytes:
    """The last steps of dkimpy's relaxed body canonicalization (RFC 6376 3.4.4): end the body
    with exactly one CRLF (dropping trailing empty lines, adding a missing CRLF), and a body
    that is only that CRLF becomes empty."""
    finished: bytes = canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body))
    return finished
