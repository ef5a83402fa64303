"""Secrets: the master key (AES-256-GCM for secrets at rest) and API keys.

Master key
    32 random bytes, base64 text in ``<data_dir>/master.key`` (mode 0600, created on first start)
    or in env ``RELAY_MASTER_KEY``, which wins. Every node sharing a database must use the same key.
    :meth:`MasterKey.encrypt` output is ``b"v1" + nonce(12) + ciphertext+tag``; the ``*_str``
    helpers wrap that in base64 text for database text columns. ``aad`` binds a token to its
    context (e.g. ``b"upstream:42:password"``) so a token copied to another row will not decrypt.

API keys
    ``rk_<8 hex public id>_<43 char urlsafe base64 secret>``. The prefix ``rk_<id>`` is stored in
    clear to find the row; only SHA-256 hex of the full key is stored (the key is 256 bits of
    entropy, so a fast hash is right; no bcrypt).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets as _random
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.vocab import ConfigError

__all__ = [
    "API_KEY_PREFIX",
    "ENV_MASTER_KEY",
    "KEY_SIZE",
    "DecryptionError",
    "MasterKey",
    "Secret",
    "generate_api_key",
    "hash_api_key",
    "load_or_create_master_key",
    "parse_api_key",
    "verify_api_key",
]

log = logging.getLogger(__name__)

ENV_MASTER_KEY = "RELAY_MASTER_KEY"
KEY_SIZE = 32
NONCE_SIZE = 12
TOKEN_VERSION = b"v1"
API_KEY_PREFIX = "rk_"

_API_KEY_RE = re.compile(r"^(rk_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")

T = TypeVar("T")


class DecryptionError(ValueError):
    """A token is malformed, was tampered with, or was made with another key or aad."""


class Secret(Generic[T]):
    """Wraps a secret value so that ``str``/``repr``/f-strings/logs show ``***``.

    Use :meth:`reveal` where the real value is needed. Equality is constant-time for str/bytes.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The wrapped value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        if isinstance(a, bytes) and isinstance(b, bytes):
            return hmac.compare_digest(a, b)
        return a == b

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> object:  # keep pickling working despite __slots__
        return (Secret, (self._value,))


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class MasterKey:
    """AES-256-GCM with a 32-byte key. ``repr`` shows only a short, non-secret fingerprint."""

    __slots__ = ("_aead", "_fingerprint")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
            raise ConfigError(f"secrets: master key must be {KEY_SIZE} bytes")
        self._aead = AESGCM(bytes(key))
        # identifies the key (compare nodes) without revealing anything useful about it
        self._fingerprint = hmac.new(bytes(key), b"relay master key fingerprint", hashlib.sha256).hexdigest()[:12]

    @classmethod
    def generate(cls) -> "MasterKey":
        """A fresh random key (tests; production keys come from :func:`load_or_create_master_key`)."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str, *, source: str = "master key") -> "MasterKey":
        """Decode base64 (standard or urlsafe) text of 32 bytes; ConfigError naming *source* if bad."""
        return cls(_decode_key(text, source))

    @property
    def fingerprint(self) -> str:
        """12 hex chars that identify this key (safe to log)."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"MasterKey(fingerprint={self._fingerprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("MasterKey cannot be pickled")

    def encrypt(self, plaintext: bytes, aad: bytes | str = b"") -> bytes:
        """``b"v1" + nonce + AES-GCM(plaintext)`` with a random 12-byte nonce."""
        nonce = os.urandom(NONCE_SIZE)
        return TOKEN_VERSION + nonce + self._aead.encrypt(nonce, _as_bytes(plaintext), _as_bytes(aad) or None)

    def decrypt(self, token: bytes, aad: bytes | str = b"") -> bytes:
        """Inverse of :meth:`encrypt`; :class:`DecryptionError` on any tampering or wrong key/aad."""
        token = bytes(token)
        head = len(TOKEN_VERSION) + NONCE_SIZE
        if not token.startswith(TOKEN_VERSION) or len(token) < head + 16:
            raise DecryptionError("not a v1 token")
        nonce = token[len(TOKEN_VERSION) : head]
        try:
            return self._aead.decrypt(nonce, token[head:], _as_bytes(aad) or None)
        except InvalidTag:
            raise DecryptionError("token does not authenticate (tampered, or another key/aad)") from None

    def encrypt_str(self, plaintext: str, aad: bytes | str = b"") -> str:
        """Encrypt text; returns ASCII base64 for a database text column."""
        return base64.b64encode(self.encrypt(plaintext.encode("utf-8"), aad)).decode("ascii")

    def decrypt_str(self, token: str, aad: bytes | str = b"") -> str:
        """Inverse of :meth:`encrypt_str`."""
        try:
            raw = base64.b64decode(token.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, AttributeError):
            raise DecryptionError("not a base64 token") from None
        try:
            return self.decrypt(raw, aad).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("plaintext is not UTF-8") from None


def _decode_key(text: str | bytes, source: str) -> bytes:
    value = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    value = "".join(value.split())
    problem = f"secrets: {source}: invalid master key (expected base64 of {KEY_SIZE} bytes)"
    if not value:
        raise ConfigError(f"secrets: {source}: empty master key (expected base64 of {KEY_SIZE} bytes)")
    try:
        if "-" in value or "_" in value:
            raw = base64.urlsafe_b64decode(value.encode("ascii"))
        else:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError(problem) from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{problem}, got {len(raw)} bytes")
    return raw


def _read_key_file(path: Path) -> MasterKey:
    try:
        info = path.stat()
        text = path.read_text("ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"secrets: {path}: cannot read master key: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secrets: %s is accessible by group/others (mode %o); chmod 600 it", path, info.st_mode & 0o777)
    return MasterKey(_decode_key(text, str(path)))


def _create_key_file(path: Path) -> MasterKey | None:
    """Write a new key without ever exposing a partial file; None if another process won the race."""
    key = os.urandom(KEY_SIZE)
    data = base64.b64encode(key) + b"\n"
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"secrets: {parent}: cannot create directory: {exc.strerror or exc}") from None
    tmp = parent / f".{path.name}.{os.getpid()}.{_random.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never overwrites: the first process to link wins
        except FileExistsError:
            return None
        except OSError:
            # no hard links on this filesystem: exclusive create of the final name instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return None
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise ConfigError(f"secrets: {path}: cannot create master key: {exc.strerror or exc}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    try:
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    log.warning("secrets: created a new master key in %s; back it up, secrets in the database need it", path)
    return MasterKey(key)


def load_or_create_master_key(path: Path, env: Mapping[str, str] | None = None) -> MasterKey:
    """The master key: env ``RELAY_MASTER_KEY`` (base64 of 32 bytes) if set, else *path*, else a
    new key written to *path* (mode 0600, parent directory created 0700).

    *env* defaults to ``os.environ``. A key of the wrong length, bad base64, or an env variable set
    to an empty string raises :class:`ConfigError` (the message never contains the key).
    """
    env = os.environ if env is None else env
    if ENV_MASTER_KEY in env:
        return MasterKey(_decode_key(env[ENV_MASTER_KEY], f"env {ENV_MASTER_KEY}"))
    path = Path(path)
    if path.exists():
        return _read_key_file(path)
    created = _create_key_file(path)
    return created if created is not None else _read_key_file(path)


# --------------------------------------------------------------------------- API keys


def hash_api_key(full_key: str) -> str:
    """SHA-256 hex of the full key: the only form stored."""
    return hashlib.sha256(full_key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str, str]:
    """A new API key: ``(full_key, prefix, sha256_hex)``; show *full_key* once, store the others."""
    prefix = API_KEY_PREFIX + _random.token_hex(4)
    full = f"{prefix}_{_random.token_urlsafe(32)}"
    return full, prefix, hash_api_key(full)


def parse_api_key(value: str) -> str | None:
    """The stored prefix (``rk_ab12cd34``) of a well-formed key, else None."""
    if not isinstance(value, str):
        return None
    match = _API_KEY_RE.match(value.strip())
    return match.group(1) if match else None


def verify_api_key(full_key: str, stored_hash: str) -> bool:
    """Constant-time check of *full_key* against the stored SHA-256 hex."""
    if not isinstance(full_key, str) or not isinstance(stored_hash, str):
        return False
    try:
        return hmac.compare_digest(hash_api_key(full_key.strip()).encode(), stored_hash.strip().lower().encode("ascii"))
    except UnicodeEncodeError:
        return False
