"""DKIM signing: one rsa-sha256 and one ed25519-sha256 (RFC 8463) signature per message.

dkimpy parses the message and canonicalizes/selects/hashes the header fields
(``rfc822_parse``, ``canonicalization.Relaxed``, ``hash_headers``). The relaxed body
canonicalization is a bytes-method rewrite of dkimpy's (its regexes cost ~0.1 ms on 4 KB of
text); the tests check it is byte for byte the same. The private-key operation is done by
``cryptography`` on keys parsed once per :class:`Signer`, because dkimpy's own RSA is pure
Python (~7 ms a signature) and its ed25519 needs pynacl.

Every signature uses c=relaxed/relaxed, signs the headers in :data:`SIGNED_HEADERS` that
are present, and oversigns From (lists it once more than it occurs) so that a From added
later breaks the signature. Benchmark: ``python -m relay.dkim``.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Union

import dkim as _dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, Relaxed, correct_empty_body, strip_trailing_lines

__all__ = ["DkimKey", "Signer", "SignerCache", "SIGNED_HEADERS", "dns_txt_value", "generate_key"]

#: Header fields signed when present (lower case). From is always signed, and oversigned.
SIGNED_HEADERS: frozenset[bytes] = frozenset(
    (
        b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
        b"mime-version", b"content-type", b"content-transfer-encoding",
        b"in-reply-to", b"references", b"list-unsubscribe",
    )
)

_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
_RSA_BITS = 2048
_MIN_RSA_BITS = 1024  # RFC 8301: verifiers MUST NOT accept less
_POLICY = CanonicalizationPolicy(Relaxed, Relaxed)
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_MAX_LINE = 76  # folded signature lines stay under the RFC 5322 78-character limit

_PrivateKey = Union[rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]


@dataclass(frozen=True)
class DkimKey:
    """One DKIM private key as handed over by the key store.

    ``private_pem`` is an unencrypted PKCS#8 PEM; it never appears in ``repr``/``str``.
    """

    selector: str
    algorithm: str
    private_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"unknown DKIM algorithm {self.algorithm!r} (want 'rsa' or 'ed25519')")
        _token(self.selector, "selector")

    def __repr__(self) -> str:
        return f"DkimKey(selector={self.selector!r}, algorithm={self.algorithm!r}, private_pem=<redacted>)"


def _token(value: str, what: str) -> bytes:
    """``value`` as ASCII bytes, refusing anything that would corrupt a tag=value list."""
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"DKIM {what} must be ASCII: {value!r}") from None
    if not raw or any(c in b"; \t\r\n=:" for c in raw):
        raise ValueError(f"invalid DKIM {what}: {value!r}")
    return raw


def _load_private_key(algorithm: str, private_pem: bytes) -> _PrivateKey:
    """Parse a PKCS#8 PEM and check it is of the kind ``algorithm`` names."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message never includes the PEM itself.
        raise ValueError(f"unreadable {algorithm} DKIM private key: {type(exc).__name__}") from None
    if algorithm == "rsa" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA DKIM key too small: {key.key_size} bits")
        return key
    if algorithm == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"DKIM private key is not an {algorithm} key")


def _txt_for(algorithm: str, key: _PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        # p= is the DER SubjectPublicKeyInfo (RFC 6376 3.6.1).
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        # p= is the raw 32-byte public key (RFC 8463 4.2).
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"


def generate_key(algorithm: str) -> tuple[bytes, str]:
    """New key: (private PKCS8 PEM bytes, DNS TXT value 'v=DKIM1; k=rsa; p=...' / 'v=DKIM1; k=ed25519; p=...').

    RSA keys are 2048 bits. An RSA TXT value is longer than 255 characters, so whoever
    publishes it must split it into several character-strings of one TXT record.
    """
    key: _PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r} (want 'rsa' or 'ed25519')")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, _txt_for(algorithm, key)


def dns_txt_value(algorithm: str, private_pem: bytes) -> str:
    """The TXT value to publish for an existing private key."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r} (want 'rsa' or 'ed25519')")
    return _txt_for(algorithm, _load_private_key(algorithm, private_pem))


def _split(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's ``rfc822_parse`` (headers, body), without splitting and re-joining the body
    when every line ends in CRLF (rfc822_parse would return that body unchanged)."""
    end = message.find(b"\r\n\r\n")
    if end > 0 and message.count(b"\n") == message.count(b"\r\n"):
        headers, _ = _dkimpy.rfc822_parse(message[: end + 2])
        return headers, message[end + 4 :]
    return _dkimpy.rfc822_parse(message)


def _relaxed_body(body: bytes) -> bytes:
    """Byte for byte ``canonicalization.Relaxed.canonicalize_body`` (the tests check it),
    using bytes methods where dkimpy's regexes cost ~0.1 ms on 4 KB of ordinary text:
    strip WSP before each CRLF, turn runs of WSP into one space, drop trailing empty lines."""
    if b" \r\n" in body or b"\t\r\n" in body:
        lines = body.split(b"\r\n")
        lines[:-1] = [line.rstrip(b" \t") for line in lines[:-1]]
        body = b"\r\n".join(lines)
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    return correct_empty_body(strip_trailing_lines(body))


def _fold(tokens: list[tuple[bytes, bytes]], start: int) -> bytes:
    """Join (separator, text) tokens, breaking with CRLF+space instead of a separator
    wherever a line would pass :data:`_MAX_LINE`. ``start`` is the length already used
    on the first line. Relaxed canonicalization makes the breaks irrelevant to the hash."""
    out: list[bytes] = []
    col = start
    for sep, text in tokens:
        if out and col + len(sep) + len(text) > _MAX_LINE:
            out.append(b"\r\n ")
            col = 1
        else:
            out.append(sep)
            col += len(sep)
        out.append(text)
        col += len(text)
    return b"".join(out)


def _chunks(data: bytes, first: int, size: int) -> list[bytes]:
    """``data`` cut into a ``first``-byte piece followed by ``size``-byte pieces."""
    pieces = [data[:first]]
    pieces.extend(data[i : i + size] for i in range(first, len(data), size))
    return pieces


class _Key:
    """A signing key, parsed once."""

    __slots__ = ("selector", "algorithm", "a_tag", "private_key")

    def __init__(self, key: DkimKey) -> None:
        self.selector = _token(key.selector, "selector")
        self.algorithm = key.algorithm
        self.a_tag = _ALGORITHMS[key.algorithm]
        self.private_key = _load_private_key(key.algorithm, key.private_pem)

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonicalized header data."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, _PKCS1, _PREHASHED_SHA256)
        # RFC 8463 3: PureEdDSA over the SHA-256 hash of the header data.
        return self.private_key.sign(digest)


class Signer:
    """Keys are parsed once at construction; sign() is then cheap and thread-safe."""

    __slots__ = ("domain", "_d", "_keys")

    def __init__(self, domain: str, keys: list[DkimKey]) -> None:
        if not keys:
            raise ValueError(f"no DKIM keys for {domain!r}")
        name = domain.strip().rstrip(".").lower()
        try:
            name.encode("ascii")
        except UnicodeEncodeError:
            name = name.encode("idna").decode("ascii")
        self.domain: str = name
        self._d = _token(name, "domain")
        self._keys = tuple(_Key(k) for k in keys)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.selector.decode()}:{k.algorithm}" for k in self._keys)
        return f"Signer(domain={self.domain!r}, keys=[{keys}])"

    def sign(self, message: bytes) -> bytes:
        """Return the DKIM-Signature header field(s) to PREPEND to message, CRLF-terminated, one per key, in the order of keys. The message uses CRLF line endings."""
        headers, body = _split(message)
        include = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
        if b"from" not in include:
            raise ValueError("message has no From header field")
        include.append(b"from")  # oversign: a From added later breaks the signature
        canonical = _POLICY.canonicalize_headers(headers)
        bh = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())

        h_tokens = [(b"", x + b":") for x in include[:-1]] + [(b"", include[-1] + b";")]
        h_tokens[0] = (b" ", b"h=" + h_tokens[0][1])
        t = str(int(time.time())).encode("ascii")

        fields: list[bytes] = []
        for key in self._keys:
            # Everything up to and including the empty "b=", with b= on its own line.
            head = _fold(
                [(b" ", b"v=1;"), (b" ", b"a=" + key.a_tag + b";"), (b" ", b"c=relaxed/relaxed;"),
                 (b" ", b"d=" + self._d + b";"), (b" ", b"s=" + key.selector + b";"),
                 (b" ", b"t=" + t + b";"), *h_tokens, (b" ", b"bh=" + bh + b";")],
                start=len(b"DKIM-Signature:"),
            ) + b"\r\n b="
            hasher = hashlib.sha256()
            _dkimpy.hash_headers(hasher, _POLICY, canonical, include, (b"DKIM-Signature", head), None)
            b = base64.b64encode(key.sign_digest(hasher.digest()))
            fields.append(b"DKIM-Signature:" + head + b"\r\n ".join(_chunks(b, _MAX_LINE - 3, _MAX_LINE - 1)) + b"\r\n")
        return b"".join(fields)


class SignerCache:
    """domain -> Signer, built once per (domain, selectors) and reused; invalidate(domain) drops one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signers: dict[str, tuple[tuple[DkimKey, ...], Signer]] = {}

    def __repr__(self) -> str:
        with self._lock:
            return f"SignerCache(domains={sorted(self._signers)!r})"

    def get(self, domain: str, keys: list[DkimKey]) -> Signer:
        """The cached Signer for ``domain`` if it was built from these same keys, else a new one."""
        name = domain.strip().rstrip(".").lower()
        wanted = tuple(keys)
        with self._lock:
            entry = self._signers.get(name)
        if entry is not None and entry[0] == wanted:
            return entry[1]
        signer = Signer(domain, list(wanted))  # parse outside the lock; a racing build is harmless
        with self._lock:
            entry = self._signers.get(name)
            if entry is not None and entry[0] == wanted:
                return entry[1]
            self._signers[name] = (wanted, signer)
        return signer

    def invalidate(self, domain: str | None = None) -> None:
        """Drop the Signer of ``domain``, or every Signer when ``domain`` is None."""
        with self._lock:
            if domain is None:
                self._signers.clear()
            else:
                self._signers.pop(domain.strip().rstrip(".").lower(), None)


def _benchmark(rounds: int = 2000) -> None:
    """Print the time to sign a ~4 KB message with one RSA-2048 and one Ed25519 key."""
    keys = [DkimKey("rsa1", "rsa", generate_key("rsa")[0]), DkimKey("ed1", "ed25519", generate_key("ed25519")[0])]
    signer = Signer("example.com", keys)
    head = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: benchmark\r\n"
        b"Date: Mon, 04 May 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n"
    message = head + line * ((4096 - len(head)) // len(line))
    for _ in range(100):
        signer.sign(message)
    start = time.perf_counter()
    for _ in range(rounds):
        signer.sign(message)
    elapsed = (time.perf_counter() - start) / rounds
    print(f"{len(message)} byte message, rsa-sha256 + ed25519-sha256: {elapsed * 1e3:.3f} ms per message")


if __name__ == "__main__":
    _benchmark()
