"""relay.submission.dkim: signatures checked with dkimpy's verifier (rsa-sha256) and, for ed25519-sha256,
with a verifier built from dkimpy's parsing/canonicalization plus cryptography's Ed25519
public key (dkimpy's own ed25519 path needs pynacl, which is not a dependency).

``old_sign`` below is the dkimpy-based signer that relay.submission.dkim's bytes-method header path
replaced (rfc822_parse, Relaxed.canonicalize_headers/canonicalize_body, hash_headers); the
differential tests check sign() gives byte for byte its output with the time fixed."""

from __future__ import annotations

import ast
import base64
import hashlib
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.submission import dkim as rdkim
from relay.submission.dkim import (
    DkimKey,
    Signer,
    SignerCache,
    dns_txt_value,
    generate_key,
)

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
).encode()


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


# -- the dkimpy-based signer relay.submission.dkim replaced, kept as the reference --------------------------

_OLD_POLICY = CanonicalizationPolicy(Relaxed, Relaxed)
_OLD_MAX_LINE = 76


def _old_split(message: bytes):
    end = message.find(b"\r\n\r\n")
    if end > 0 and message.count(b"\n") == message.count(b"\r\n"):
        headers, _ = dkim.rfc822_parse(message[: end + 2])
        return headers, message[end + 4 :]
    return dkim.rfc822_parse(message)


def _old_fold(tokens, start):
    out = []
    col = start
    for sep, text in tokens:
        if out and col + len(sep) + len(text) > _OLD_MAX_LINE:
            out.append(b"\r\n ")
            col = 1
        else:
            out.append(sep)
            col += len(sep)
        out.append(text)
        col += len(text)
    return b"".join(out)


def _old_chunks(data, first, size):
    pieces = [data[:first]]
    pieces.extend(data[i : i + size] for i in range(first, len(data), size))
    return pieces


def old_sign(signer: Signer, message: bytes) -> bytes:
    """The previous Signer.sign: dkimpy parses, canonicalizes, selects and hashes."""
    headers, body = _old_split(message)
    include = [name.lower() for name, _ in headers if name.lower() in rdkim.SIGNED_HEADERS]
    if b"from" not in include:
        raise ValueError("message has no From header field")
    include.append(b"from")
    canonical = _OLD_POLICY.canonicalize_headers(headers)
    bh = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())
    h_tokens = [(b"", x + b":") for x in include[:-1]] + [(b"", include[-1] + b";")]
    h_tokens[0] = (b" ", b"h=" + h_tokens[0][1])
    t = str(int(time.time())).encode("ascii")
    fields = []
    for key in signer._keys:
        head = _old_fold(
            [(b" ", b"v=1;"), (b" ", b"a=" + key.a_tag + b";"), (b" ", b"c=relaxed/relaxed;"),
             (b" ", b"d=" + signer._d + b";"), (b" ", b"s=" + key.selector + b";"),
             (b" ", b"t=" + t + b";"), *h_tokens, (b" ", b"bh=" + bh + b";")],
            start=len(b"DKIM-Signature:"),
        ) + b"\r\n b="
        hasher = hashlib.sha256()
        dkim.hash_headers(hasher, _OLD_POLICY, canonical, include, (b"DKIM-Signature", head), None)
        b = base64.b64encode(key.sign_digest(hasher.digest()))
        fields.append(b"DKIM-Signature:" + head + b"\r\n ".join(_old_chunks(b, _OLD_MAX_LINE - 3, _OLD_MAX_LINE - 1)) + b"\r\n")
    return b"".join(fields)


def old_prepare(message: bytes):
    """(h= names, canonical signed header fields in signing order, base64 body hash) by dkimpy."""
    headers, body = dkim.rfc822_parse(message)
    include = [name.lower() for name, _ in headers if name.lower() in rdkim.SIGNED_HEADERS]
    if b"from" not in include:
        raise ValueError("message has no From header field")
    include.append(b"from")
    selected = dkim.select_headers(_OLD_POLICY.canonicalize_headers(headers), include)
    data = b"".join(name + b":" + value for name, value in selected)
    return include, data, base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())


def outcome(fn, *args):
    """("value", what fn returns) or ("raised", the type and text of what it raises)."""
    try:
        return "value", fn(*args)
    except Exception as exc:  # noqa: BLE001 -- a differential test compares whatever either side raises
        return "raised", type(exc), str(exc)


TYPICAL = (b"From: <app@bench.test>\r\nTo: <rcpt@dest.test>\r\nDate: Sat, 21 Nov 2026 12:00:00 +0000\r\n"
           b"Message-Id: <20261121120000.1234@x>\r\nSubject: hello\r\n\r\n" + (b"x" * 76 + b"\r\n") * 52)

#: Messages the fast header path takes (True) or leaves to dkimpy (False).
DIFFERENTIAL = [
    (TYPICAL, True),
    (MESSAGE, True),
    (b"From: a@b\r\n\r\n", True),
    (b"From: a@b\r\n\r\n\r\nx\r\n", True),
    (b"FROM:a@b\r\nX-Other: 1\r\n\r\n", True),
    (b"To: a\r\nFrom: x\r\nTo: b\r\nfrom: y\r\nSUBJECT:\r\nto:c\r\n\r\nbody", True),  # repeated fields
    (b"From:\r\n\r\n", True),  # empty value
    (b"From: \t a \t\r\n\t b\r\n \r\nSubject:\t\r\n\tx  y \r\n\r\n  \t\r\n", True),  # folding, WSP runs
    (b"From: a\r\r\n b\rc\r\r\nSubject: \x0bx\x0c \r\n\r\n", True),  # bare CR, VT, FF in values
    (b"From: a@b\r\nX-\xc3\xa9: 1\r\n\r\n", False),  # non-ASCII field name
    (b"From: a@b\r\nX Bad: 1\r\n\r\n", False),  # rfc822_parse raises
    (b"From a@b Sat Nov 21 12:00:00 2026\r\nFrom: a@b\r\n\r\nx\r\n", False),  # mbox From line
    (b"From: a@b\r\nFrom x\r\n more\r\n\r\n", False),  # continuation after an mbox line
    (b" From: a@b\r\n\r\n", False),  # continuation first: dkimpy raises IndexError
    (b"\r\nFrom: a@b\r\n\r\n", False),  # empty header section
    (b"\r\n From: a@b\r\n\r\n", False),  # empty header section, then a continuation line
    (b"From: a@b\r\nnocolon\r\n\r\n", False),
    (b"From: a@b\r\n:x\r\n\r\n", False),
    (b"From: a@b\r\nSubject : x\r\n\r\n", False),
    (b"From: a@b\r\n", False),  # no blank line
    (b"From: a@b", False),
    (b"", False),
    (MESSAGE.replace(b"\r\n", b"\n"), False),  # bare LF
    (b"From: a@b\r\n\r\nbody\nline\r\n", False),  # bare LF in the body only
    (b"To: a@b\r\nSubject: x\r\n\r\nbody\r\n", True),  # no From: refused on the fast path too
]


NO_FROM = ("raised", ValueError, "message has no From header field")


def _fast(message: bytes):
    """The fast header path's result, or None when _prepare leaves ``message`` to dkimpy."""
    end = message.find(b"\r\n\r\n")
    if end > 0 and message.count(b"\n") == message.count(b"\r\n"):
        return rdkim._fast_header_data(message[:end])
    return None


@pytest.mark.parametrize("message, fast", DIFFERENTIAL)
def test_prepare_matches_dkimpy(message: bytes, fast: bool) -> None:
    expected = outcome(old_prepare, message)
    assert outcome(rdkim._prepare, message) == expected
    got = _fast(message)
    assert (got is not None) == fast
    if expected[0] == "value":
        include, data, _ = expected[1]
        if got is not None:
            assert (got[0] + [b"from"], got[1]) == (include, data)
        names, fallback_data, _ = rdkim._dkimpy_header_data(message)
        assert (names + [b"from"], fallback_data) == (include, data)
    elif got is not None:
        assert expected == NO_FROM and b"from" not in got[0]


@pytest.fixture(scope="module")
def signers(keys: list[DkimKey]) -> list[Signer]:
    """Both keys in both orders; each alone; domains and selectors of several lengths, so
    that the fold breaks before or inside the key-constant v=/a=/c=/d=/s= prefix."""
    long_selector = DkimKey("s" * 40, "ed25519", keys[1].private_pem)
    return [
        Signer(DOMAIN, keys), Signer(DOMAIN, keys[::-1]), Signer("a.io", keys[:1]), Signer("b.io", keys[1:]),
        Signer("x" * 30 + ".example.net", [long_selector, keys[0]]), Signer("d" * 60 + ".example", [long_selector]),
    ]


@pytest.mark.parametrize("now", [0.0, 1_790_000_000.9, 9_999_999_999.0, 12_345_678_901_234.0])
@pytest.mark.parametrize("message", [m for m, _ in DIFFERENTIAL], ids=range(len(DIFFERENTIAL)))
def test_signature_fields_identical_to_old(signers: list[Signer], monkeypatch, message: bytes, now: float) -> None:
    monkeypatch.setattr(time, "time", lambda: now)
    for signer in signers:
        assert outcome(signer.sign, message) == outcome(old_sign, signer, message)


def test_fast_path_signatures_verify(signer: Signer, dns) -> None:
    for message, fast in DIFFERENTIAL:
        if fast and outcome(old_prepare, message) != NO_FROM:
            signed = signer.sign(message) + message
            assert dkimpy_verifies(signed, 0, dns) is True, message
            assert verify_ed25519(signed, 1, dns) is True, message


# -- random header blocks ------------------------------------------------------------------------

_NAMES = [b"From", b"from", b"FROM", b"To", b"tO", b"Cc", b"Subject", b"SUBJECT", b"Date", b"Message-ID",
          b"message-id", b"Reply-To", b"MIME-Version", b"Content-Type", b"Content-Transfer-Encoding",
          b"In-Reply-To", b"References", b"List-Unsubscribe", b"X-Mailer", b"Received", b"X-A!#~", b"Bcc"]
_VALUE_PIECES = [b" ", b"  ", b"\t", b" \t ", b"a", b"Bc", b"<x@y.z>", b",", b":", b";", b"=?utf-8?q?x?=",
                 b"\xc3\xa9", b"\r\n ", b"\r\n\t", b"\r\n  \t", b"\r", b"\x0b", b"\x0c", b"from", b"b="]
_ODD_LINES = [b"nocolon", b"From x@y Sat", b"From : x", b"X Bad: y", b":empty", b"X-\xc3\xa9: y", b" cont",
              b"\tcont", b"", b"Sub\tject: x", b"\x0bFrom: x", b"\rFrom: x", b"To:\n y", b"From: a\nb"]

_value = st.lists(st.sampled_from(_VALUE_PIECES), max_size=8).map(b"".join)
_field = st.builds(lambda name, value: name + b":" + value, st.sampled_from(_NAMES), _value)
_line = st.one_of(_field, _field, _field, _field, st.sampled_from(_ODD_LINES))
_body = st.lists(st.sampled_from([b"x", b" ", b"\t", b"\r\n", b"\n", b"\r", b"  \r\n"]), max_size=12).map(b"".join)


@st.composite
def _blocks(draw, odd: bool) -> bytes:
    """A header block without its last CRLF: fields (with folding, WSP runs, repeats, odd
    case, empty values, bare CR) and, when ``odd``, lines rfc822_parse reads otherwise."""
    fields = draw(st.lists(_line if odd else _field, min_size=1, max_size=10))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), b"From: <a@b.c>")
    return b"\r\n".join(fields)


_messages = st.builds(
    lambda block, end, body: block + b"\r\n" + end + body,
    st.one_of(_blocks(odd=False), _blocks(odd=True)),
    st.sampled_from([b"\r\n", b"\r\n", b"", b"\n", b"\r\n\r\n"]),
    _body,
)


@settings(max_examples=500, deadline=None)
@given(_blocks(odd=False))
@example(b"From: a\r\nTo: \t\r\n x\r\nto:y\r\nFrom: b")
@example(b"Subject:  a  \r\n\t\r\n  b\t\r\nFROM:\r\n\t")
def test_random_well_formed_blocks_take_the_fast_path(block: bytes) -> None:
    got = rdkim._fast_header_data(block)
    assert got is not None
    expected = outcome(old_prepare, block + b"\r\n\r\n")
    if expected == NO_FROM:
        assert b"from" not in got[0]
    else:
        assert expected[1][:2] == (got[0] + [b"from"], got[1])


@settings(max_examples=500, deadline=None)
@given(_messages)
def test_random_messages_prepare_like_dkimpy(message: bytes) -> None:
    assert outcome(rdkim._prepare, message) == outcome(old_prepare, message)


@settings(max_examples=150, deadline=None)
@given(_messages, st.integers(0, 10**13))
def test_random_messages_sign_like_old(signers: list[Signer], message: bytes, now: int) -> None:
    with mock.patch.object(time, "time", lambda: now + 0.5):
        assert outcome(signers[0].sign, message) == outcome(old_sign, signers[0], message)


def test_signer_reaches_dkimpy_only_through_its_compat_module() -> None:
    """STYLE 8: dkimpy's internals live in relay.submission.dkimpy_compat alone."""
    tree = ast.parse(Path(rdkim.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name == "dkim" or name.startswith("dkim.")}
    assert "relay.submission" in imported  # ``from relay.submission import dkimpy_compat``
