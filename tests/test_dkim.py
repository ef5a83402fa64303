"""relay.dkim: signatures checked with dkimpy's verifier (rsa-sha256) and, for ed25519-sha256,
with a verifier built from dkimpy's parsing/canonicalization plus cryptography's Ed25519
public key (dkimpy's own ed25519 path needs pynacl, which is not a dependency)."""

from __future__ import annotations

import base64
import hashlib
import random
import re
from concurrent.futures import ThreadPoolExecutor

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dkim.canonicalization import CanonicalizationPolicy, Relaxed

from relay import dkim as rdkim
from relay.dkim import DkimKey, Signer, SignerCache, dns_txt_value, generate_key

DOMAIN = "example.com"


def _encoded_word(text: str) -> str:
    return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


MESSAGE = (
    "From: Zoë Example <zoe@example.com>\r\n"
    "To: Bob <bob@example.org>,\r\n"
    "\tCarol <carol@example.net>\r\n"
    "Cc: dave@example.org\r\n"
    "Reply-To: Zoë <zoe+replies@example.com>\r\n"
    f"Subject: {_encoded_word('Grüße aus Köln – ')}\r\n"
    f" {_encoded_word('Überraschung ✓')}\r\n"
    "Date: Mon, 04 May 2026 10:00:00 +0200\r\n"
    "Message-ID: <20260504100000.1234@example.com>\r\n"
    "In-Reply-To: <parent@example.org>\r\n"
    "References: <root@example.org>\r\n"
    "    <parent@example.org>\r\n"
    "List-Unsubscribe: <mailto:unsubscribe@example.com?subject=unsubscribe>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "X-Mailer: relay-tests\r\n"
    "\r\n"
    "Hello Bob,  \r\n"
    "\r\n"
    "this line has\ttabs and  double  spaces.\t \r\n"
    "Grüße, Zoë\r\n"
    "\r\n"
    "\r\n"
    "\r\n"
).encode("utf-8")


@pytest.fixture(scope="module")
def keys() -> list[DkimKey]:
    rsa_pem, _ = generate_key("rsa")
    ed_pem, _ = generate_key("ed25519")
    return [DkimKey("rsa2026a", "rsa", rsa_pem), DkimKey("ed2026a", "ed25519", ed_pem)]


@pytest.fixture(scope="module")
def signer(keys: list[DkimKey]) -> Signer:
    return Signer(DOMAIN, keys)


@pytest.fixture(scope="module")
def dns(keys: list[DkimKey]):
    records = {
        f"{k.selector}._domainkey.{DOMAIN}.".encode(): dns_txt_value(k.algorithm, k.private_pem).encode()
        for k in keys
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def dkimpy_verifies(message: bytes, idx: int, dnsfunc) -> bool:
    """dkimpy's verifier; a body hash mismatch is raised rather than returned."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False


def _sig_fields(signed: bytes, idx: int) -> dict[bytes, bytes]:
    return dkim.DKIM(signed).verify_headerprep(idx)[0]


def verify_ed25519(message: bytes, idx: int, dnsfunc) -> bool:
    """RFC 6376/8463 verification of signature ``idx`` of ``message`` (ed25519-sha256 only).

    Unlike dkimpy's verifier this does not add an extra ``from`` to h=, so the From
    oversigning is what has to catch an added From header."""
    d = dkim.DKIM(message)
    sig, include, sigheaders = d.verify_headerprep(idx)
    assert sig[b"a"] == b"ed25519-sha256"
    policy = CanonicalizationPolicy.from_c_value(sig[b"c"])
    body_hash = hashlib.sha256(policy.canonicalize_body(d.body)).digest()
    if body_hash != base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"])):
        return False
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(d.headers), include, sigheaders[idx], sig)
    txt = dkim.util.parse_tag_value(dnsfunc(sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."))
    assert txt[b"k"] == b"ed25519"
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(txt[b"p"]))
    try:
        public.verify(base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"])), hasher.digest())
    except InvalidSignature:
        return False
    return True


def test_both_signatures_verify(signer: Signer, dns) -> None:
    headers = signer.sign(MESSAGE)
    assert headers.endswith(b"\r\n") and headers.count(b"DKIM-Signature:") == 2
    signed = headers + MESSAGE
    assert dkimpy_verifies(signed, 0, dns) is True
    assert verify_ed25519(signed, 1, dns) is True


def test_ed25519_with_dkimpy_verifier_when_pynacl_present(signer: Signer, dns) -> None:
    pytest.importorskip("nacl")
    signed = signer.sign(MESSAGE) + MESSAGE
    assert dkimpy_verifies(signed, 1, dns) is True


def test_signature_tags(signer: Signer, keys: list[DkimKey]) -> None:
    signed = signer.sign(MESSAGE) + MESSAGE
    for idx, (key, algorithm) in enumerate(zip(keys, (b"rsa-sha256", b"ed25519-sha256"))):
        sig = _sig_fields(signed, idx)
        assert sig[b"a"] == algorithm
        assert sig[b"c"] == b"relaxed/relaxed"
        assert sig[b"d"] == DOMAIN.encode() and sig[b"s"] == key.selector.encode()
        assert sig[b"t"].isdigit() and b"i" not in sig
        h = [x.lower() for x in re.split(rb"\s*:\s*", sig[b"h"])]
        assert h.count(b"from") == 2  # oversigned
        assert set(h) == set(rdkim.SIGNED_HEADERS)  # every listed header is present in MESSAGE
        assert b"x-mailer" not in h
    for line in signed.split(b"\r\n\r\n")[0].split(b"\r\n"):
        assert len(line) <= 78


def test_modified_body_fails(signer: Signer, dns) -> None:
    signed = signer.sign(MESSAGE) + MESSAGE
    tampered = signed.replace(b"Hello Bob", b"Hello Bib")
    assert dkimpy_verifies(tampered, 0, dns) is False
    assert verify_ed25519(tampered, 1, dns) is False


def test_whitespace_changes_survive_relaxed(signer: Signer, dns) -> None:
    signed = signer.sign(MESSAGE) + MESSAGE
    relaxed = signed.replace(b"Hello Bob,  \r\n", b"Hello   Bob,\r\n").replace(b"Subject: ", b"Subject:\t")
    assert dkimpy_verifies(relaxed, 0, dns) is True
    assert verify_ed25519(relaxed, 1, dns) is True


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_from_fails(signer: Signer, dns, where: str) -> None:
    sigs = signer.sign(MESSAGE)
    evil = b"From: Mallory <mallory@example.net>\r\n"
    if where == "top":
        signed = sigs + evil + MESSAGE
    else:
        head, body = MESSAGE.split(b"\r\n\r\n", 1)
        signed = sigs + head + b"\r\n" + evil + b"\r\n" + body
    assert dkimpy_verifies(signed, 0, dns) is False
    assert verify_ed25519(signed, 1, dns) is False


def test_message_without_from_is_refused(signer: Signer) -> None:
    with pytest.raises(ValueError):
        signer.sign(b"To: bob@example.org\r\nSubject: x\r\n\r\nbody\r\n")


def test_repr_never_shows_key_material(keys: list[DkimKey], signer: Signer) -> None:
    secrets = [k.private_pem for k in keys]
    pieces = [line for pem in secrets for line in pem.decode().splitlines() if "PRIVATE KEY" not in line]
    texts = [repr(k) for k in keys] + [str(k) for k in keys] + [repr(signer), str(signer), repr([keys, signer])]
    for text in texts:
        assert "PRIVATE" not in text
        for piece in pieces:
            assert piece not in text
    assert "rsa2026a" in repr(keys[0]) and "rsa2026a" in repr(signer)


def test_signer_cache_reuses_and_invalidates(keys: list[DkimKey]) -> None:
    cache = SignerCache()
    first = cache.get(DOMAIN, keys)
    assert cache.get(DOMAIN, list(keys)) is first
    assert cache.get("Example.COM", keys) is first
    other = cache.get("example.org", keys)
    assert other is not first and other.domain == "example.org"
    rotated = cache.get(DOMAIN, keys[:1])  # different selectors: rebuilt
    assert rotated is not first and cache.get(DOMAIN, keys[:1]) is rotated
    cache.invalidate(DOMAIN)
    assert cache.get(DOMAIN, keys[:1]) is not rotated
    assert cache.get("example.org", keys) is other
    cache.invalidate()
    assert cache.get("example.org", keys) is not other


def test_keys_and_txt_values() -> None:
    for algorithm in ("rsa", "ed25519"):
        pem, txt = generate_key(algorithm)
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
        assert txt.startswith(f"v=DKIM1; k={algorithm}; p=")
        assert dns_txt_value(algorithm, pem) == txt
        public = base64.b64decode(txt.split("p=", 1)[1])
        if algorithm == "rsa":
            assert dkim.evaluate_pk(b"x", txt.encode())[1] == 2048  # dkimpy reads p= as SPKI
        else:
            assert len(public) == 32  # RFC 8463: the raw Ed25519 public key
    rsa_pem, _ = generate_key("rsa")
    with pytest.raises(ValueError):
        dns_txt_value("ed25519", rsa_pem)
    with pytest.raises(ValueError):
        Signer(DOMAIN, [DkimKey("s1", "ed25519", rsa_pem)])
    with pytest.raises(ValueError):
        DkimKey("s1", "dsa", rsa_pem)
    with pytest.raises(ValueError):
        Signer(DOMAIN, [])


def test_sign_is_thread_safe(signer: Signer, dns) -> None:
    messages = [MESSAGE.replace(b"Hello Bob", f"Hello Bob {i}".encode()) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        signed = list(pool.map(lambda m: signer.sign(m) + m, messages))
    for message in signed:
        assert dkimpy_verifies(message, 0, dns) is True
        assert verify_ed25519(message, 1, dns) is True


def test_body_canonicalization_matches_dkimpy() -> None:
    rnd = random.Random(8463)
    alphabet = [b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"a", b"\xc3\xa9"]
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"x", b"x \t", b" \r\n", MESSAGE.split(b"\r\n\r\n", 1)[1]]
    bodies += [b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(40))) for _ in range(5000)]
    for body in bodies:
        assert rdkim._relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_message_split_matches_dkimpy() -> None:
    for message in (MESSAGE, MESSAGE.replace(b"\r\n", b"\n"), b"From: a@b\r\n\r\n", b"From: a@b\r\n",
                    b"From: a@b\r\n\r\n\r\nx\r\n", MESSAGE.replace(b"\r\n\r\nHello", b"\r\n\r\n\nHello")):
        headers, body = rdkim._split(message)
        assert (headers, body) == tuple(dkim.rfc822_parse(message))
