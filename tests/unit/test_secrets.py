"""relay.secrets: master key file/env, AES-GCM tokens, API keys."""

from __future__ import annotations

import base64
import logging
import os
import stat

import pytest

from relay.vocab import ConfigError
from relay.secrets import (
    DecryptionError,
    MasterKey,
    Secret,
    generate_api_key,
    hash_api_key,
    load_or_create_master_key,
    parse_api_key,
    verify_api_key,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- master key


def test_master_key_created_0600_and_reused(tmp_path):
    path = tmp_path / "data" / "master.key"
    first = load_or_create_master_key(path, {})
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert len(base64.b64decode(path.read_text())) == 32
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp files left

    second = load_or_create_master_key(path, {})
    assert second.fingerprint == first.fingerprint
    assert second.decrypt(first.encrypt(b"hello")) == b"hello"


def test_env_master_key_wins(tmp_path):
    path = tmp_path / "master.key"
    from_file = load_or_create_master_key(path, {})
    raw = os.urandom(32)
    from_env = load_or_create_master_key(path, {"RELAY_MASTER_KEY": b64(raw)})
    assert from_env.fingerprint != from_file.fingerprint
    assert from_env.fingerprint == MasterKey(raw).fingerprint
    # env does not create a file
    other = tmp_path / "other.key"
    load_or_create_master_key(other, {"RELAY_MASTER_KEY": b64(raw)})
    assert not other.exists()


@pytest.mark.parametrize("value", ["", "not base64!!", b64(b"short"), b64(os.urandom(33))])
def test_bad_env_master_key(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        load_or_create_master_key(tmp_path / "k", {"RELAY_MASTER_KEY": value})
    assert "RELAY_MASTER_KEY" in str(info.value)
    if value:
        assert value not in str(info.value)


def test_wrong_length_file_refused(tmp_path):
    path = tmp_path / "master.key"
    path.write_text(b64(os.urandom(16)))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="master key"):
        load_or_create_master_key(path, {})


def test_world_readable_key_warns(tmp_path, caplog):
    path = tmp_path / "master.key"
    path.write_text(b64(os.urandom(32)))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="relay.secrets"):
        load_or_create_master_key(path, {})
    assert "group/others" in caplog.text


def test_default_env_is_os_environ(tmp_path, monkeypatch):
    raw = os.urandom(32)
    monkeypatch.setenv("RELAY_MASTER_KEY", b64(raw))
    assert load_or_create_master_key(tmp_path / "k").fingerprint == MasterKey(raw).fingerprint


# --------------------------------------------------------------------------- encryption


def test_encrypt_decrypt_roundtrip():
    key = MasterKey.generate()
    token = key.encrypt(b"secret data", b"row:1")
    assert token.startswith(b"v1") and len(token) == 2 + 12 + len(b"secret data") + 16
    assert key.decrypt(token, b"row:1") == b"secret data"
    assert key.encrypt(b"x") != key.encrypt(b"x")  # random nonce
    assert key.decrypt(key.encrypt(b"")) == b""


def test_tampering_fails():
    key = MasterKey.generate()
    token = bytearray(key.encrypt(b"secret data"))
    token[-1] ^= 1
    with pytest.raises(DecryptionError):
        key.decrypt(bytes(token))
    good = key.encrypt(b"secret data", b"row:1")
    with pytest.raises(DecryptionError):
        key.decrypt(good, b"row:2")  # wrong aad
    with pytest.raises(DecryptionError):
        MasterKey.generate().decrypt(good, b"row:1")  # wrong key
    with pytest.raises(DecryptionError):
        key.decrypt(b"v2" + good[2:], b"row:1")  # unknown version
    with pytest.raises(DecryptionError):
        key.decrypt(b"v1short")


def test_str_helpers():
    key = MasterKey.generate()
    token = key.encrypt_str("pässword", aad="upstream:1")
    assert isinstance(token, str) and token.isascii()
    assert key.decrypt_str(token, aad="upstream:1") == "pässword"
    with pytest.raises(DecryptionError):
        key.decrypt_str("%%% not base64")
    with pytest.raises(DecryptionError):
        key.decrypt_str(token, aad="upstream:2")


def test_repr_hides_the_key():
    raw = os.urandom(32)
    key = MasterKey(raw)
    for text in (repr(key), str(key), f"{key}"):
        assert raw.hex() not in text
        assert b64(raw) not in text
        assert key.fingerprint in text
    with pytest.raises(ConfigError):
        MasterKey(b"too short")


def test_secret_wrapper():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and str(s) == "***" and f"{s}" == "***"
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("other")


# --------------------------------------------------------------------------- API keys


def test_api_key_generate_parse_verify():
    full, prefix, digest = generate_api_key()
    assert full.startswith(prefix + "_")
    assert prefix.startswith("rk_") and len(prefix) == 11
    assert len(full) == len(prefix) + 1 + 43
    assert parse_api_key(full) == prefix
    assert digest == hash_api_key(full) and len(digest) == 64
    assert verify_api_key(full, digest)
    assert not verify_api_key(full + "x", digest)
    assert not verify_api_key(full, "0" * 64)
    assert not verify_api_key(full, "é" * 64)
    other, _, other_digest = generate_api_key()
    assert other != full and other_digest != digest
    assert not verify_api_key(other, digest)


@pytest.mark.parametrize(
    "value",
    ["", "rk_", "rk_ab12cd34", "rk_ab12cd34_", "xx_ab12cd34_" + "a" * 43, "rk_AB12CD34_" + "a" * 43,
     "rk_ab12cd34_" + "a" * 42, "rk_ab12cd34_" + "!" * 43],
)
def test_parse_api_key_rejects(value):
    assert parse_api_key(value) is None
