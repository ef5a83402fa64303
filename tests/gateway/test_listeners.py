"""The listeners as a newcomer meets them: a client that does not trust the generated certificate, and
an address already in use at start-up."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, port_of, wait_for

UNTRUSTED = "TLS handshake failed: TLSV1_ALERT_UNKNOWN_CA (the client does not trust the certificate)"


def _starttls_with_verification(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())  # the self-signed certificate is refused


def _smtps_with_verification(port: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ssl.create_default_context())


def _plain_client_on_smtps(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"EHLO client.test\r\n")
        s.recv(100)  # the server's alert, or the close


@pytest.mark.parametrize("listener,client,reason", [
    ("submission", _starttls_with_verification, UNTRUSTED),
    ("smtps", _smtps_with_verification, UNTRUSTED),
    ("smtps", _plain_client_on_smtps, "TLS handshake failed: "),
])
async def test_a_failed_handshake_is_one_info_line_with_peer_and_reason(gateway_factory, caplog, listener, client,
                                                                        reason):
    gw = await gateway_factory()
    caplog.set_level(logging.INFO)
    caplog.clear()  # from here: what the client's handshake makes the gateway log
    await asyncio.to_thread(client, port_of(gw, listener))
    await wait_for(lambda: any(r.getMessage().startswith("TLS handshake failed") for r in caplog.records))
    await asyncio.sleep(0.2)  # anything logged after it (a traceback) would be seen too
    ours = [r for r in caplog.records if r.getMessage().startswith("TLS handshake failed")]
    assert len(ours) == 1
    (line,) = ours
    assert (line.levelno, line.name, line.peer, line.listener) == (logging.INFO, "relay.smtp.session", "127.0.0.1",
                                                                   listener)
    assert line.getMessage().startswith(reason) and line.exc_info is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    # and the listener serves the next client, one that trusts the certificate
    assert await asyncio.to_thread(_trusting_client, listener, port_of(gw, listener), gw.settings.data_dir) == 250


def _trusting_client(listener: str, port: int, data_dir: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
    ctx.check_hostname = False  # issued to relay.test, reached as 127.0.0.1
    if listener == "smtps":
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx) as client:
            return client.ehlo()[0]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=ctx)
        return client.ehlo()[0]


# -- an address in use ----------------------------------------------------------------------------------

_candidate = Path(sys.executable).with_name("relay")
RELAY = str(_candidate) if _candidate.exists() else shutil.which("relay")


def _serve(tmp_path: Path, **listeners: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), RELAY_HOSTNAME="relay.test",
               RELAY_SMTP_SUBMISSION=f"127.0.0.1:{free_port()}", RELAY_SMTP_SMTPS=f"127.0.0.1:{free_port()}",
               RELAY_API_LISTEN=f"127.0.0.1:{free_port()}")
    env.update(listeners)
    return subprocess.run([RELAY, "serve"], env=env, text=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("listener,variable", [("submission", "RELAY_SMTP_SUBMISSION"),
                                               ("smtps", "RELAY_SMTP_SMTPS"),
                                               ("api", "RELAY_API_LISTEN")])
def test_an_address_in_use_names_the_listener_and_the_address_with_exit_1(tmp_path, listener, variable):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        res = _serve(tmp_path, **{variable: address})
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines()[-1] == (f"relay: cannot start: the {listener} listener cannot listen on {address}: "
                                           "Address already in use")
    logged = res.stdout + res.stderr  # the log goes to stdout
    assert "Traceback" not in logged and "listening" not in logged and "ERROR" not in logged
