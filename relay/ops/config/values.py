"""Typed values shared by the settings models: host:port listeners, paths, networks, masked URLs.

Pure functions and ``Annotated`` types only; no I/O beyond resolving a path against the working
directory. The ``BeforeValidator`` functions raise :class:`ValueError`, never TypeError (pydantic reports
ValueError as a validation error but lets TypeError through), with an ``expected ...`` message.
"""

from __future__ import annotations

import ipaddress
import os
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "WILDCARD_HOSTS",
    "Duration",
    "Float",
    "Int",
    "Listener",
    "Network",
    "OptionalPath",
    "format_hostport",
    "mask_url",
    "parse_hostport",
    "required_path",
]

_DISABLED = frozenset({"", "none", "off", "disabled"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``; IPv6 hosts are bracketed: ``"[::1]:587"``.

    Port 0 (an ephemeral port, handy in tests) is allowed. Raises :class:`ValueError` with an
    ``expected ...`` message on anything else.
    """
    expected = "expected host:port, e.g. 0.0.0.0:587 or [::1]:587"
    if not isinstance(value, str):
        raise ValueError(expected)  # noqa: TRY004 (documented: ValueError, as for a malformed string)
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or text[end + 1 : end + 2] != ":":
            raise ValueError(expected)
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{expected} ('{host}' is not an IPv6 address)") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            # no port at all, or an unbracketed IPv6 address
            raise ValueError(expected)
    if not host or any(c.isspace() for c in host):
        raise ValueError(expected)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{expected} (port must be 0-65535)")
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mask_url(url: str) -> str:
    """Return *url* with any password replaced by ``***`` (for logs, reprs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    userinfo = f"{parts.username}:***" if parts.username else ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc}"))


def _abspath(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip():
            return Path(os.path.abspath(os.path.expanduser(text)))
    return value


def _optional_path(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _abspath(value)


def required_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a directory path")
    return _abspath(value)


def _listener(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in _DISABLED:
            return None
        host, port = parse_hostport(value)
        return format_hostport(host, port)
    return value  # let the str type report the error


def _no_bool_int(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true/false")  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
    return value


def _no_bool_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> Any:
    """Seconds as a number, or a string with a unit: ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as 30m, 12h or 7d, not true/false")
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _UNITS.get(text[-1:]) if text else None
        try:
            return float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise ValueError("expected seconds or a duration such as 30m, 12h or 7d") from None
    return value


def _network(value: Any) -> IPv4Network | IPv6Network:
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a network such as 10.0.0.0/8 or 2001:db8::/32")  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("expected a network such as 10.0.0.0/8 or 2001:db8::/32") from None


Int = Annotated[int, BeforeValidator(_no_bool_int)]
Float = Annotated[float, BeforeValidator(_no_bool_float)]
Duration = Annotated[float, BeforeValidator(_duration)]  # seconds; "12h", "7d" in a file
Listener = Annotated[str | None, BeforeValidator(_listener)]
OptionalPath = Annotated[Path | None, BeforeValidator(_optional_path)]
Network = Annotated[
    IPv4Network | IPv6Network,
    BeforeValidator(_network),
    PlainSerializer(str, return_type=str, when_used="json"),
]

