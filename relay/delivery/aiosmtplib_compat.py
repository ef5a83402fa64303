"""Everything the delivery code assumes about aiosmtplib beyond its documented API, in one place.

aiosmtplib opens the session (connect, EHLO, STARTTLS, AUTH) and sends one-by-one commands. Its
data() gives no moment at which the final dot is known to have left (relay.delivery.dotgate), so
the transaction writes the body and the dot itself; and it reads one reply per command it wrote
(replies that arrive early are dropped), so a pipelined transaction's envelope, DATA, body and
dot go through our own protocol (relay.delivery.channel): the session's transport is lent to it
between two of aiosmtplib's commands and given back afterwards. This relies on aiosmtplib
internals that are not part of its documented API:

- ``SMTP.protocol`` is the session's ``SMTPProtocol`` and its ``transport`` the current transport
  (the TLS one after STARTTLS);
- between two commands ``SMTPProtocol`` waits for nothing (no reply pending), so bytes that reach
  our protocol meanwhile are not missed by it, and it can take the transport back as it was;
- ``SMTPProtocol.connection_lost`` (forwarded by our protocol) is how ``SMTP`` learns that the
  session is gone (it closes itself, ``is_connected`` turns false), and ``pause_writing`` /
  ``resume_writing`` keep its flow control right;
- a transaction sent one command at a time keeps aiosmtplib's protocol (lending the transport
  costs a restart of reading on uvloop, per transaction) and writes the body and the dot through
  ``SMTPProtocol.write``: the reply to the dot must then be expected as ``execute_command`` expects
  a reply, by setting the private ``_response_pending`` (:func:`write_expecting_reply`), or
  ``read_response`` could miss a reply that arrives before it is awaited.

That flag is the only private attribute of aiosmtplib touched in relay.delivery. :func:`check`
refuses versions this was not written against; the composition root calls it at start-up, and
relay.delivery.channel at import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar, cast

import aiosmtplib
from aiosmtplib import SMTPServerDisconnected
from aiosmtplib.protocol import SMTPProtocol

from relay.ops.versions import require

LIBRARY = "aiosmtplib"
SUPPORTED = ((5, 1, 3), (6, 0, 0))  # from (inclusive) .. to (exclusive); written against 5.1.3
P = TypeVar("P", bound=asyncio.BaseProtocol)


def check() -> str:
    """The installed aiosmtplib version, if this module was written for it; else UnsupportedVersion
    (it lends the session's transport to the pipelined transaction)."""
    low, high = SUPPORTED
    return require(LIBRARY, low, high, "relay.delivery.aiosmtplib_compat")


def session_protocol(smtp: aiosmtplib.SMTP) -> SMTPProtocol:
    """aiosmtplib's protocol of a connected session (SMTPServerDisconnected if there is none)."""
    protocol = smtp.protocol
    if protocol is None or protocol.transport is None:
        raise SMTPServerDisconnected("Connection lost")
    return protocol


def lend_transport(smtp: aiosmtplib.SMTP, make: Callable[[asyncio.BaseProtocol], P]
                   ) -> tuple[asyncio.WriteTransport, P, asyncio.BaseProtocol]:
    """Between two commands: route the session's transport to ``make(owner)`` (``owner`` is
    aiosmtplib's protocol, to forward connection_lost, pause_writing and resume_writing to).
    Returns the transport, the new protocol and the owner to :func:`give_back` to."""
    owner = session_protocol(smtp)
    transport = owner.transport
    if transport is None or transport.is_closing():
        raise SMTPServerDisconnected("Connection lost")
    protocol = make(owner)
    transport.set_protocol(protocol)
    return cast(asyncio.WriteTransport, transport), protocol, owner  # (SMTPProtocol types it BaseTransport)


def give_back(transport: asyncio.BaseTransport, owner: asyncio.BaseProtocol) -> None:
    """aiosmtplib's protocol takes the transport back (unless it is closing: the session is over)."""
    if not transport.is_closing():
        transport.set_protocol(owner)


def write_expecting_reply(protocol: SMTPProtocol, data: bytes) -> None:
    """Write ``data`` (the body, the dot) whose reply ``protocol.read_response`` will read: marked
    as expected first, as SMTPProtocol.execute_command does before it writes a command."""
    protocol._response_pending = True  # (aiosmtplib 5.x drops a reply nothing is expecting)
    protocol.write(data)
