"""relay.submission.dkimpy_compat: the start-up version check, and its wrappers are dkimpy's own
results (the signer built on them is compared with dkimpy in tests/unit/submission/test_dkim.py)."""

from __future__ import annotations

import importlib.metadata

import dkim
import pytest
from dkim import canonicalization

from relay.submission import dkimpy_compat

MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject:  folded\r\n\tline\r\n"
    b"From: second@example.com\r\n\r\nbody  text \r\n\r\n\r\n"
)


def _installed(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    real = importlib.metadata.version

    def fake(name: str) -> str:
        return version if name == "dkimpy" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)


def test_check_passes_on_the_installed_dkimpy() -> None:
    assert dkimpy_compat.check() == importlib.metadata.version("dkimpy")


@pytest.mark.parametrize("version", ["1.1.5", "1.1.8", "1.1.99.post1"])
def test_check_accepts_the_supported_range(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _installed(monkeypatch, version)
    assert dkimpy_compat.check() == version


@pytest.mark.parametrize("version", ["1.1.4", "1.0.2", "1.2.0", "1.2.0rc1", "2.0", "not-a-version"])
def test_check_refuses_other_versions_naming_library_and_version(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    _installed(monkeypatch, version)
    with pytest.raises(RuntimeError) as raised:
        dkimpy_compat.check()
    assert f"dkimpy {version} is installed" in str(raised.value)
    assert dkimpy_compat.SUPPORTED in str(raised.value)


def test_check_refuses_a_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(RuntimeError, match="dkimpy"):
        dkimpy_compat.check()


def test_wrappers_return_dkimpys_results() -> None:
    headers, body = dkimpy_compat.parse_message(MESSAGE)
    assert (headers, body) == tuple(dkim.rfc822_parse(MESSAGE))
    relaxed = canonicalization.CanonicalizationPolicy(canonicalization.Relaxed, canonicalization.Relaxed)
    canonical = dkimpy_compat.relaxed_headers(headers)
    assert canonical == relaxed.canonicalize_headers(headers)
    include = [b"from", b"subject", b"to", b"from", b"from"]
    assert dkimpy_compat.select_headers(canonical, include) == dkim.select_headers(canonical, include)
    assert body == b"body  text \r\n\r\n\r\n"
    for text in (b"", b"\r\n", b"x", b"x\r\n\r\n", b"a\r\n\r\nb\r\n\r\n\r\n"):  # no WSP: nothing to compress
        assert dkimpy_compat.finish_relaxed_body(text) == canonicalization.Relaxed.canonicalize_body(text)
