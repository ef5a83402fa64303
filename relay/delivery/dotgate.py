"""The final dot goes only together with its journal record (Linux): exactly once across a crash.

The body goes first, on its own; the dot is written only once the body has left the process,
so it enters the kernel in the same synchronous step that releases it. (Linux sends corked data
by itself after 200 ms: a dot handed to the kernel before a stall - a slow journal file open, a
busy event loop, a large body draining - would leave without its record.) Under SO_LINGER(on, 0)
any close, a crash of this process included, is a reset that discards unsent data, and
TCP_CORK keeps the dot unsent until ``release`` commits it (SO_LINGER off), journals it
(relay.delivery.journal) and uncorks it in one C-level call chain: the system calls follow each
other with no Python bytecode between them, so no other thread can take the GIL in the gaps. A
crash thus leaves either no dot at the upstream and no record (the message is sent again), or
both; the gap between the first two system calls can at worst cause a second copy, never a loss.

Over TLS the socket's own transport sits below the encrypting one and cannot be inspected on
every event loop (uvloop): there the kernel's queue tells instead (SIOCOUTQNSD/SIOCOUTQ: the
body sent and room for the dot's record before it is written, the record unsent after).
Elsewhere (no TCP_CORK) the dot is journaled once it has left the process's write buffer.

tests/test_dot_gate.py kills a real process at each of these moments.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import functools
import operator
import socket
import struct
from collections.abc import Callable

from relay.delivery.commands import DOT
from relay.delivery.target import DotHooks


async def send_body_and_dot(transport: asyncio.WriteTransport, write: Callable[[bytes], None], payload: bytes,
                            on_dot: Callable[[], DotHooks]) -> DotHooks:
    """After DATA's 354: write the (dot-stuffed) body, then the final dot through the gate. ``on_dot``
    is called once the body has left the process, before the dot is written; its ``journal`` has
    run (with the dot's release) when this returns. The caller then reads the reply."""
    gate = DotGate(transport)
    if not gate.arm():
        write(payload + DOT)
        await _until(lambda: not transport.get_write_buffer_size())
        hooks = on_dot()
        hooks.journal()
        return hooks
    write(payload)
    try:
        await _until(lambda: gate.body_gone(transport))
        hooks = on_dot()
        if not gate.write_dot(transport, write):  # the kernel had no room: rare
            await _until(lambda: gate.dot_gone(transport))
    except BaseException:
        transport.abort()  # reset: whatever is unsent, the dot included, is discarded
        raise
    gate.release(hooks.journal)
    return hooks


async def _until(ready: Callable[[], bool]) -> None:
    while not ready():  # the rest is still in our buffers (a large body, a slow upstream)
        await asyncio.sleep(0.001)


class DotGate:
    """The socket options and queue checks of one transaction's final dot (see the module's text)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.active = self.fd >= 0 and _setsockopt is not None
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.room = 0
        self._setsockopt: Callable[..., int] = _setsockopt or _no_setsockopt
        if self.active and self.tls:
            self.room = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2

    def arm(self) -> bool:
        """Any close from now on is a reset (before the body is written)."""
        if self.active:
            self.active = self._setsockopt(self.fd, socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET, 8) == 0
        return self.active

    def body_gone(self, transport: asyncio.WriteTransport) -> bool:
        """The body has left the process (over TLS: sent, with room for the dot): the dot may go."""
        if transport.get_write_buffer_size():
            return False
        return not self.tls or (_queued(self.fd, _SIOCOUTQNSD) <= 0 and _queued(self.fd, _SIOCOUTQ) <= self.room)

    def write_dot(self, transport: asyncio.WriteTransport, write: Callable[[bytes], None]) -> bool:
        """Cork and write the final dot; True when it is now in the kernel, held. False (the kernel
        had no room): the caller waits for :meth:`dot_gone` before releasing."""
        if self._setsockopt(self.fd, socket.IPPROTO_TCP, socket.TCP_CORK, _ONE, 4) != 0:
            raise OSError("TCP_CORK could not be set")
        write(DOT)
        return self.dot_gone(transport)

    def dot_gone(self, transport: asyncio.WriteTransport) -> bool:
        """The dot has left the process (held by the cork, or over TLS possibly sent already)."""
        if transport.get_write_buffer_size():
            return False
        return not self.tls or _queued(self.fd, _SIOCOUTQNSD) != 0 or _queued(self.fd, _SIOCOUTQ) <= 0

    def release(self, journal: Callable[[], object]) -> None:
        """Let the dot go. Turning the reset-on-close off is the commit point: from then on any
        close, a crash included, sends the held dot (the kernel flushes a corked socket on close).
        ``journal`` - a C callable, see above - is written next, and only then is the dot uncorked:
        uncorking transmits, and on loopback it wakes the upstream's process, which may then take
        this CPU before the journal's write (seen: the dot at the upstream, the process killed ms
        later with no record). Between the first two calls nothing is transmitted."""
        calls: tuple[Callable[[], object], ...] = (
            functools.partial(self._setsockopt, self.fd, socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF, 8),
            journal,
            functools.partial(self._setsockopt, self.fd, socket.IPPROTO_TCP, socket.TCP_CORK, _ZERO, 4))
        list(map(operator.call, calls))  # one C call chain: map, operator.call and the partials are C


def _queued(fd: int, request: int) -> int:
    """Bytes in the socket's send queue: SIOCOUTQ all not yet acknowledged, SIOCOUTQNSD not yet
    sent. -1 if the kernel cannot say (the checks above then rely on the transport's buffer alone)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    except OSError:
        return -1


_SIOCOUTQ = 0x5411  # = TIOCOUTQ (linux/sockios.h)
_SIOCOUTQNSD = 0x894B


def _libc_setsockopt() -> Callable[..., int] | None:
    """setsockopt(2) through ctypes.PyDLL, which keeps the GIL across the call."""
    if not hasattr(socket, "TCP_CORK"):
        return None
    try:
        fn = ctypes.PyDLL(None).setsockopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _no_setsockopt(*_args: object) -> int:
    """Where there is no TCP_CORK the gate is never active; this is never called there."""
    return -1


_setsockopt = _libc_setsockopt()
_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
_ONE = struct.pack("i", 1)
_ZERO = struct.pack("i", 0)
