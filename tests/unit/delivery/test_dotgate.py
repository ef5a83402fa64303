"""The final dot and the dot journal: a process killed before it journaled a dot never lets that dot go.

relay.delivery.dotgate holds the dot back until the journal record is written with it
(relay.delivery.journal). Linux lets corked data go by itself after 200 ms, so a dot handed to the
kernel early would leave during any longer stall (a slow journal file open, a busy event loop, a
large body still draining) and a crash then would send the message again after restart. Here a
real process stalls at the moment the journal record is prepared, then is SIGKILLed: the upstream
(a raw SMTP server in the test) must not have the final dot.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import textwrap

import pytest

from relay.ops.tls import generate_self_signed
from tests.conftest import free_port

CHILD = textwrap.dedent("""
    import asyncio, functools, os, signal, sys, time
    from relay.delivery.upstream import DotHooks, Upstream, UpstreamConfig

    port, size, stall, kill = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    encryption, loop = sys.argv[5], sys.argv[6]
    if loop == "uvloop":
        import uvloop
        uvloop.install()

    def on_dot(accepted):
        time.sleep(stall)  # the journal file opened on a busy disk, a long GC, ...
        if kill == "before-journal":
            os.kill(os.getpid(), signal.SIGKILL)
        if kill == "at-journal":  # killed where the journal's write(2) would be: the dot is committed
            return DotHooks(functools.partial(os.kill, os.getpid(), signal.SIGKILL), lambda: None)
        return DotHooks(lambda: None, lambda: None)

    async def main():
        up = Upstream(UpstreamConfig(id="u", name="u", host="127.0.0.1", port=port, encryption=encryption,
                                    verify_tls=False),
                      local_hostname="relay.test", connect_timeout=5, command_timeout=5)
        body = b"Subject: x\\r\\n\\r\\n" + b"y" * 70 + b"\\r\\n"
        body *= max(1, size // len(body))
        res = await up.send("a@example.com", ["r@dest.org"], body, on_dot)
        print(res.results["r@dest.org"][0], flush=True)

    asyncio.run(main())
""")


class RawUpstream:
    """Just enough SMTP: records everything after 354 and answers the final dot with 250."""

    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.data = bytearray()
        self.dot = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-raw\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"") + b"250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while chunk := await reader.read(65536):
                        self.data += chunk
                        if self.data.endswith(b"\r\n.\r\n"):
                            self.dot.set()
                            writer.write(b"250 2.0.0 taken\r\n")
                            break
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            writer.close()


async def _run(mode: str, size: int, stall: float, kill: str, tmp_path) -> tuple[RawUpstream, subprocess.CompletedProcess]:
    encryption, loop, pipelining = mode.split("-")
    up = RawUpstream(pipelining == "pipelining")
    port = free_port()
    context = None
    if encryption == "ssl":  # implicit TLS: the dot is a TLS record below the encrypting transport
        cert, key = generate_self_signed("localhost")
        (tmp_path / "up.crt").write_bytes(cert)
        (tmp_path / "up.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "up.crt", tmp_path / "up.key")
    server = await asyncio.start_server(up.handle, "127.0.0.1", port, ssl=context)
    try:
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CHILD, str(port), str(size), str(stall),
                                                        kill, encryption, loop],
                                       capture_output=True, text=True, timeout=30)
        await asyncio.wait_for(up.closed.wait(), 5)
    finally:
        server.close()
    return up, proc


@pytest.fixture(autouse=True)
def _linux_only():
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("the dot is held with TCP_CORK (Linux)")


MODES = ["none-asyncio-pipelining", "none-asyncio-onebyone", "none-uvloop-pipelining", "ssl-asyncio-pipelining",
         "ssl-uvloop-pipelining"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [4_000, 3_000_000], ids=["4KB", "3MB"])
async def test_a_process_killed_before_journaling_the_dot_never_sends_it(mode, size, tmp_path):
    # a stall longer than the kernel's 200 ms cork ceiling
    up, proc = await _run(mode, size, stall=0.35, kill="before-journal", tmp_path=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(up.data) >= 0.9 * min(size, 100_000)  # the body was on its way
    assert not up.dot.is_set() and not up.data.endswith(b"\r\n.\r\n")


@pytest.mark.parametrize("mode", ["none-uvloop-pipelining", "ssl-uvloop-pipelining"])
@pytest.mark.parametrize("size", [4_000, 3_000_000], ids=["4KB", "3MB"])
async def test_the_same_stall_without_a_kill_delivers(mode, size, tmp_path):
    up, proc = await _run(mode, size, stall=0.35, kill="no", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "250"
    assert up.dot.is_set()


@pytest.mark.parametrize("mode", ["none-uvloop-pipelining", "none-asyncio-onebyone", "ssl-uvloop-pipelining"])
async def test_a_process_killed_as_it_journals_the_dot_still_sends_it(mode, tmp_path):
    """The journal record says the dot went: the dot must go even if the process dies right there,
    before it uncorks (the kernel flushes a corked socket on close once the reset-on-close is off)."""
    up, proc = await _run(mode, 4_000, stall=0, kill="at-journal", tmp_path=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert up.dot.is_set() and up.data.endswith(b"\r\n.\r\n")
