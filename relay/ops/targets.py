"""Outbound targets an account sets (webhook URLs, the hosts of its upstreams) must be public:
a host resolves only to public addresses, checked when the target is set AND again right before
each connection, which then goes to the address that was checked (no DNS-rebinding bypass).
The operator may allow ranges (``[security] allow_targets``); operator-owned targets are not checked.

Pure address rules plus one resolver call; the error never says more than "not a public address"
(no port scan through our answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from relay.vocab import Invalid

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_PUBLIC = "must resolve to public addresses only (the operator can allow a range: [security] allow_targets)"
UNRESOLVABLE = "the host does not resolve"


def is_public(ip: Address) -> bool:
    """A globally routable unicast address. IPv4-mapped and NAT64-embedded IPv4 addresses are judged
    by the IPv4 address they carry."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            return is_public(ip.sixtofour)
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def allowed(ip: Address, allow: Sequence[Network]) -> bool:
    return is_public(ip) or any(ip.version == n.version and ip in n for n in allow)


def literal(host: str) -> Address | None:
    """``host`` as an IP literal (brackets stripped), including the forms inet_aton accepts
    (``2130706433``, ``0x7f.1``, ``127.1``), which resolvers would turn into addresses too."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Checked:
    """A host and the one address to connect to, both checked."""

    host: str
    address: str
    addresses: tuple[str, ...] = ()  # every address it resolved to (all checked), ``address`` first


async def resolve_checked(host: str, port: int, allow: Sequence[Network] = (), *, field: str = "url") -> Checked:
    """Resolve ``host``; every address must be allowed (one private address refuses the host, so a
    round-robin name cannot slip one in). Invalid(``field``) otherwise."""
    ip = literal(host)
    if ip is not None:
        addresses: list[Address] = [ip]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise Invalid(UNRESOLVABLE, field) from None
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        if not addresses:
            raise Invalid(UNRESOLVABLE, field)
    if not all(allowed(a, allow) for a in addresses):
        raise Invalid(NOT_PUBLIC, field)
    return Checked(host, str(addresses[0]), tuple(dict.fromkeys(str(a) for a in addresses)))


def pinned(url: str, checked: Checked) -> tuple[str, str]:
    """``url`` with its host replaced by the checked address, and the Host header it had."""
    parts = urlsplit(url)
    host = f"[{checked.address}]" if ":" in checked.address else checked.address
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + host + (f":{parts.port}" if parts.port else "")
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)), hostport


def default_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)
