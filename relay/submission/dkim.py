"""DKIM signing: one rsa-sha256 and one ed25519-sha256 (RFC 8463) signature per message.

Every signature uses c=relaxed/relaxed, signs the headers in :data:`SIGNED_HEADERS` that
are present, and oversigns From (lists it once more than it occurs) so that a From added
later breaks the signature. Benchmark: ``python -m relay.submission.dkim``.

What does not depend on the key is computed once per message (:func:`_prepare`): the h=
list, the canonicalized signed header fields in signing order, and the body hash. For the
usual message (CRLF line endings only, a blank line after the header, every header line a
``name:`` line or a continuation of one) the header block is split and relaxed-canonicalized
(RFC 6376 3.4.2) and the fields are selected (RFC 6376 5.4.2) with bytes methods
(:func:`_fast_header_data`). Anything else -- bare LF, no blank line, a line without a colon,
an mbox ``From `` line, a continuation before the first field, odd bytes in a field name --
goes through dkimpy (``rfc822_parse``, ``canonicalization.Relaxed``, ``select_headers``,
:func:`_dkimpy_header_data`), which also raises dkimpy's errors for malformed input. Those dkimpy
internals are reached only through :mod:`relay.submission.dkimpy_compat`. The tests
check both paths give the same bytes and that sign() is byte for byte the dkimpy-based
implementation it replaced. The relaxed body canonicalization is a bytes-method rewrite of
dkimpy's (its regexes cost ~0.1 ms on 4 KB of text), also checked against dkimpy.

The private-key operation is done by ``cryptography`` on keys parsed once per :class:`Signer`,
because dkimpy's own RSA is pure Python (~7 ms a signature) and its ed25519 needs pynacl.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relay.submission import dkimpy_compat

__all__ = ["SIGNED_HEADERS", "DkimKey", "Signer", "SignerCache", "dns_txt_value", "generate_key"]

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
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_MAX_LINE = 76  # folded signature lines stay under the RFC 5322 78-character limit

_PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


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
        headers, _ = dkimpy_compat.parse_message(message[: end + 2])
        return headers, message[end + 4 :]
    return dkimpy_compat.parse_message(message)


def _relaxed_body(body: bytes) -> bytes:
    """Byte for byte ``canonicalization.Relaxed.canonicalize_body`` (the tests check it),
    using bytes methods where dkimpy's regexes cost ~0.1 ms on 4 KB of text:
    strip WSP before each CRLF, turn runs of WSP into one space, drop trailing empty lines.
    Each ``in`` over a body without a match scans all of it, so the cheap single-byte
    searches (memchr) decide first which of the others are needed."""
    has_tab = b"\t" in body
    has_space = b" " in body
    if has_tab or has_space:
        if (has_space and b" \r\n" in body) or (has_tab and b"\t\r\n" in body):
            lines = body.split(b"\r\n")
            lines[:-1] = [line.rstrip(b" \t") for line in lines[:-1]]
            body = b"\r\n".join(lines)
        if has_tab:
            body = body.replace(b"\t", b" ")
        while b"  " in body:
            body = body.replace(b"  ", b" ")
    return dkimpy_compat.finish_relaxed_body(body)


def _relaxed_value(value: bytes) -> bytes:
    """Relaxed canonical form of a header field value that contains no bare LF: unfold
    (drop CRLF), turn runs of SP/HTAB into one space, strip. Like dkimpy, ``bytes.strip()``
    removes every ASCII whitespace byte at either end (also CR, VT, FF)."""
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return value.strip()


#: Bytes rfc822_parse accepts in a field name (``[\x21-\x7e]``; the name ends at the first colon).
_NAME_BYTES = bytes(range(0x21, 0x7F))


def _fast_header_data(block: bytes) -> tuple[list[bytes], bytes] | None:
    """(names of the signed fields top to bottom, their canonical ``name:value CRLF`` in
    signing order, joined) for the header block ``block`` (up to, not including, the CRLF
    of the blank line) of a message without bare LF; None when rfc822_parse could read
    ``block`` differently from a plain split into ``name:value`` fields (or would raise),
    so dkimpy must do it.

    Relaxed canonicalization (RFC 6376 3.4.2) is done on the whole block: HTAB becomes
    SP, CRLF before SP (a fold) is dropped, runs of SP become one; then each field is
    split at its first colon, its name lowercased and its value stripped. A field name
    never holds WSP or CRLF (that falls back), so this is dkimpy's per-field result.

    Signing order (RFC 6376 5.4.2, dkimpy's ``select_headers``): h= lists each signed name
    once per occurrence, top to bottom, and its k-th mention signs the k-th occurrence
    counted from the bottom."""
    first = block[0]
    if first == 0x0D or first == 0x20 or first == 0x09:
        return None  # an empty first line, a continuation before any field, a bare CR
    if 0x09 in block:
        block = block.replace(b"\t", b" ")
    block = block.replace(b"\r\n ", b" ")
    while b"  " in block:
        block = block.replace(b"  ", b" ")
    include: list[bytes] = []
    fields: list[bytes] = []
    for text in block.split(b"\r\n"):
        name, colon, value = text.partition(b":")
        if not name or not colon:
            return None  # rfc822_parse skips an mbox "From " line or raises
        name = name.lower()
        if name in SIGNED_HEADERS:
            include.append(name)
            fields.append(name + b":" + value.strip())
        elif name.translate(None, _NAME_BYTES):
            return None  # a byte outside [\x21-\x7e] before the colon: not a field for dkimpy
    if len(set(include)) != len(include):  # a repeated field: reorder
        found: dict[bytes, list[bytes]] = {}
        for name, canonical in zip(include, fields):
            found.setdefault(name, []).append(canonical)
        fields = [found[name].pop() for name in include]
    fields.append(b"")
    return include, b"\r\n".join(fields)


def _dkimpy_header_data(message: bytes) -> tuple[list[bytes], bytes, bytes]:
    """(signed names top to bottom, canonical signed fields in signing order joined, body)
    the way the dkimpy-based signer did it: ``rfc822_parse``, ``Relaxed.canonicalize_headers``
    and ``select_headers``. Raises dkimpy's errors for input it cannot parse."""
    headers, body = _split(message)
    include = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
    canonical = dkimpy_compat.relaxed_headers(headers)
    selected = dkimpy_compat.select_headers(canonical, [*include, b"from"])
    return include, b"".join([name + b":" + value for name, value in selected]), body


def _prepare(message: bytes) -> tuple[list[bytes], bytes, bytes]:
    """What every signature of ``message`` shares: (h= names, oversigned From last;
    canonical signed header fields in signing order, joined; base64 body hash)."""
    end = message.find(b"\r\n\r\n")
    fast = None
    if end > 0 and message.count(b"\n") == message.count(b"\r\n"):
        fast = _fast_header_data(message[:end])
    if fast is not None:
        include, data = fast
        body = message[end + 4 :]
    else:
        include, data, body = _dkimpy_header_data(message)
    if b"from" not in include:
        raise ValueError("message has no From header field")
    include.append(b"from")  # oversign: a From added later breaks the signature
    return include, data, base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())


def _fold(tokens: list[tuple[bytes, bytes]], start: int, continued: bool = False) -> bytes:
    """Join (separator, text) tokens, breaking with CRLF+space instead of a separator
    wherever a line would pass :data:`_MAX_LINE`. ``start`` is the length already used
    on the current line; ``continued`` says tokens already precede on it (so a break may
    come before the first token). Relaxed canonicalization makes the breaks irrelevant
    to the hash."""
    out: list[bytes] = []
    col = start
    for sep, text in tokens:
        if (out or continued) and col + len(sep) + len(text) > _MAX_LINE:
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


_PREFIX_START = len(b"DKIM-Signature:")


class _Key:
    """A signing key, parsed once, with the folded key-constant start of its signature
    (``v=``, ``a=``, ``c=``, ``d=``, ``s=``) and the column that start ends at."""

    __slots__ = ("a_tag", "algorithm", "prefix", "prefix_col", "private_key", "selector")

    def __init__(self, key: DkimKey, d: bytes) -> None:
        self.selector = _token(key.selector, "selector")
        self.algorithm = key.algorithm
        self.a_tag = _ALGORITHMS[key.algorithm]
        self.private_key = _load_private_key(key.algorithm, key.private_pem)
        self.prefix = _fold(
            [(b" ", b"v=1;"), (b" ", b"a=" + self.a_tag + b";"), (b" ", b"c=relaxed/relaxed;"),
             (b" ", b"d=" + d + b";"), (b" ", b"s=" + self.selector + b";")],
            start=_PREFIX_START,
        )
        last_break = self.prefix.rfind(b"\r\n")
        self.prefix_col = _PREFIX_START + len(self.prefix) if last_break < 0 else len(self.prefix) - last_break - 2

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonicalized header data."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, _PKCS1, _PREHASHED_SHA256)
        # RFC 8463 3: PureEdDSA over the SHA-256 hash of the header data.
        return self.private_key.sign(digest)


class Signer:
    """Keys are parsed once at construction; sign() is then cheap and thread-safe."""

    __slots__ = ("_d", "_keys", "domain")

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
        self._keys = tuple(_Key(k, self._d) for k in keys)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.selector.decode()}:{k.algorithm}" for k in self._keys)
        return f"Signer(domain={self.domain!r}, keys=[{keys}])"

    def sign(self, message: bytes) -> bytes:
        """Return the DKIM-Signature header field(s) to PREPEND to message, CRLF-terminated, one per
        key, in the order of keys. The message uses CRLF line endings."""
        include, data, bh = _prepare(message)
        tokens = [(b" ", b"t=" + str(int(time.time())).encode("ascii") + b";"), (b" ", b"h=" + include[0] + b":")]
        tokens += [(b"", name + b":") for name in include[1:-1]]
        tokens.append((b"", include[-1] + b";"))
        tokens.append((b" ", b"bh=" + bh + b";"))

        fields: list[bytes] = []
        for key in self._keys:
            # Everything up to and including the empty "b=", with b= on its own line.
            head = key.prefix + _fold(tokens, key.prefix_col, continued=True) + b"\r\n b="
            hasher = hashlib.sha256(data)
            # The signature field itself, relaxed-canonicalized, without its CRLF; its b= is
            # still empty, so there is no b= value to remove (dkimpy's RE_BTAG is a no-op).
            hasher.update(b"dkim-signature:" + _relaxed_value(head))
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
