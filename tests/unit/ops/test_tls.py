"""relay.ops.tls: self-signed certificate generation, server/client contexts, a real handshake."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from relay.vocab import ConfigError
from relay.ops.tls import client_context, ensure_certificate, server_context


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return ensure_certificate(None, None, tmp_path_factory.mktemp("data"), "mail.example.com")


def test_generated_once_and_reused(tmp_path):
    cert, key = ensure_certificate(None, None, tmp_path, "mail.example.com")
    assert cert == tmp_path / "tls" / "cert.pem" and key == tmp_path / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    again = ensure_certificate(None, None, tmp_path, "mail.example.com")
    assert again == (cert, key)
    assert cert.read_bytes() == first

    parsed = x509.load_pem_x509_certificate(first)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"mail.example.com", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 825 <= lifetime.days <= 826


def test_given_pair_checked(tmp_path, pair):
    cert, key = pair
    assert ensure_certificate(cert, key, tmp_path, "x") == (cert, key)
    with pytest.raises(ConfigError, match="tls.cert"):
        ensure_certificate(tmp_path / "missing.pem", key, tmp_path, "x")
    with pytest.raises(ConfigError, match="tls.key"):
        ensure_certificate(cert, tmp_path / "missing.pem", tmp_path, "x")
    with pytest.raises(ConfigError):
        ensure_certificate(cert, None, tmp_path, "x")
    assert not (tmp_path / "tls").exists()


def test_server_context_settings(pair):
    ctx = server_context(*pair)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str | None, bytes]:
    """Loopback TCP handshake; returns (client-side TLS version, echoed bytes)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(1024))
        except BaseException as exc:  # reported through the client side
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="mail.example.com") as tls:
                tls.sendall(b"EHLO")
                return tls.version(), tls.recv(1024)
    finally:
        thread.join(5)
        listener.close()


def test_loopback_handshake(pair):
    version, echoed = _handshake(server_context(*pair), client_context(verify=False))
    assert version in ("TLSv1.2", "TLSv1.3")
    assert echoed == b"EHLO"


def test_tls12_handshake_uses_aead(pair):
    client = client_context(verify=False)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, _ = _handshake(server_context(*pair), client)
    assert version == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_refuses_tls11(pair):
    assert server_context(*pair).minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context(verify=False)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(server_context(*pair), client)


def test_client_context_verifies_by_default(pair):
    strict = client_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_context(*pair), strict)
    # trusting the self-signed certificate explicitly works, host name included
    version, _ = _handshake(server_context(*pair), client_context(cafile=str(pair[0])))
    assert version is not None


def test_client_context_no_verify():
    ctx = client_context(verify=False)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
