"""TLS: the server certificate (given, or self-signed on first start) and SSL contexts.

* :func:`ensure_certificate` returns the (cert, key) paths to use: the configured pair, checked,
  or ``<data_dir>/tls/cert.pem`` + ``key.pem`` generated once (EC P-256, 825 days, SAN = hostname,
  localhost, 127.0.0.1, ::1) and regenerated only when it is about to expire.
* :func:`server_context` for the SMTP listeners (STARTTLS and implicit TLS): TLS 1.2+, AEAD only.
* :func:`client_context` for connections to upstream relays.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.vocab import ConfigError

__all__ = [
    "CERT_NAME",
    "KEY_NAME",
    "SERVER_CIPHERS",
    "VALID_DAYS",
    "client_context",
    "ensure_certificate",
    "generate_self_signed",
    "server_context",
    "swap_certificate",
]

log = logging.getLogger(__name__)

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


# --------------------------------------------------------------------------- certificates


def _san_entries(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in (hostname, "localhost", "127.0.0.1", "::1"):
        name = name.strip().rstrip(".")
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            names.append(x509.DNSName(name.encode("idna").decode("ascii")))
        except (UnicodeError, ValueError):
            log.warning("tls: %r is not a valid DNS name; left out of the certificate", name)
    return names


def generate_self_signed(hostname: str, days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key, as ``(cert_pem, key_pem)`` (key: PKCS#8, clear)."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = hostname if 0 < len(hostname) <= 64 else "relay"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Relay self-signed"),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise generation between processes (workers starting together) with flock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _needs_new(cert_path: Path, key_path: Path) -> bool:
    """True when the generated pair is missing or about to expire; ConfigError if unreadable."""
    if not cert_path.exists() or not key_path.exists():
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tls: {cert_path}: unreadable generated certificate ({exc}); delete it to regenerate") from None
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
        log.warning("tls: self-signed certificate %s expires %s; generating a new one", cert_path, cert.not_valid_after_utc)
        return True
    return False


def _check_pair(cert: Path, key: Path, what: str) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"config: {what}: cannot load certificate {cert} with key {key}: {exc}") from None


def ensure_certificate(cert: Path | None, key: Path | None, data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """The certificate and key paths to serve.

    Given *cert* and *key*: both must exist and match (ConfigError otherwise, naming ``tls.cert``
    / ``tls.key``). Neither given: ``data_dir/tls/{cert,key}.pem``, generated self-signed on the
    first call (key mode 0600) and reused afterwards.
    """
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("config: tls: tls.cert and tls.key must be set together")
        cert, key = Path(cert), Path(key)
        for name, path in (("tls.cert", cert), ("tls.key", key)):
            if not path.is_file():
                raise ConfigError(f"config: {name}: file not found: '{path}'")
        _check_pair(cert, key, "tls.cert")
        return cert, key

    directory = Path(data_dir) / "tls"
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            if _needs_new(cert_path, key_path):
                cert_pem, key_pem = generate_self_signed(hostname)
                _write_atomic(key_path, key_pem, 0o600)
                _write_atomic(cert_path, cert_pem, 0o644)
                log.warning("tls: generated a self-signed certificate for %s in %s", hostname, directory)
    except OSError as exc:
        raise ConfigError(f"tls: {directory}: cannot create the self-signed certificate: {exc}") from None
    return cert_path, key_path


# --------------------------------------------------------------------------- contexts


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """Server-side context: TLS >= 1.2, ECDHE+AEAD ciphers for 1.2, no compression, server order."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: cannot load certificate {cert} with key {key}: {exc}") from None
    return ctx


def swap_certificate(listening: ssl.SSLContext, current: ssl.SSLContext) -> None:
    """Serve *current*'s certificate on every new handshake of *listening* (the context the listeners
    were started with: asyncio keeps it for the life of the server).

    OpenSSL calls the server-name callback on every ClientHello, with or without SNI; switching the
    connection's context there is the documented way to pick a certificate per handshake. Sessions
    already established keep theirs. Passing *listening* itself restores its own certificate.
    """
    if current is listening:
        listening.sni_callback = None
        return

    def pick(ssl_object: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_object.context = current

    listening.sni_callback = pick


def client_context(verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
    """Context for connecting to upstreams: TLS >= 1.2; system CAs (or *cafile*) when *verify*.

    With ``verify=False`` the certificate and host name are not checked (encryption only).
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: cannot load CA file {cafile}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
