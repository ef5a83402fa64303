"""The pure halves of the upstream transaction: the reply parser and the command encoders. No I/O.

The parser replaces aiosmtplib's (it reads one reply per command and drops what arrives early),
so it keeps a differential test against aiosmtplib's own SMTPProtocol, driven through its public
methods.
"""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib import SMTPResponseException
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.commands import DATA, DOT, RSET, dot_stuffed, envelope
from relay.delivery.replies import MAX_PENDING, MAX_REPLY_LINE, ReplyError, ReplyParser, take_reply

OK = 250
START_INPUT = 354
MALFORMED = -1


# -- the reply parser ----------------------------------------------------------------------------
def test_one_reply_in_one_piece():
    assert ReplyParser().feed(b"250 2.0.0 ok\r\n") == [(OK, "2.0.0 ok")]


def test_a_multi_line_reply_is_joined_with_newlines_and_takes_the_last_lines_code():
    p = ReplyParser()
    assert p.feed(b"250-relay.test\r\n250-PIPELINING\r\n") == []
    assert p.feed(b"250 8BITMIME\r\n") == [(OK, "relay.test\nPIPELINING\n8BITMIME")]


def test_pipelined_replies_in_one_read_come_out_in_order():
    p = ReplyParser()
    got = p.feed(b"250 2.1.0 sender ok\r\n250 2.1.5 r1\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
    assert got == [(OK, "2.1.0 sender ok"), (OK, "2.1.5 r1"), (550, "5.1.1 no such user"),
                   (START_INPUT, "go ahead")]


def test_replies_split_byte_by_byte_are_reassembled():
    stream = b"250-first\r\n250 second\r\n421 4.3.2 bye\r\n"
    p = ReplyParser()
    got = [r for i in range(len(stream)) for r in p.feed(stream[i:i + 1])]
    assert got == [(OK, "first\nsecond"), (421, "4.3.2 bye")]
    assert p.error is None


def test_bare_lf_line_ends_and_a_code_alone_parse_as_aiosmtplib_does():
    assert ReplyParser().feed(b"250\n354 go\n") == [(OK, ""), (START_INPUT, "go")]


def test_leading_empty_lines_drop_out_as_in_aiosmtplib():
    p = ReplyParser()
    assert p.feed(b"220-\r\n220-\r\n220 ready\r\n") == [(220, "ready")]
    assert p.feed(b"250-a\r\n250-\r\n250 b\r\n250-x\r\n250 \r\n") == [(OK, "a\n\nb"), (OK, "x\n")]


def test_a_malformed_line_sets_the_error_after_the_replies_before_it():
    p = ReplyParser()
    assert p.feed(b"250 ok\r\nhello there\r\n250 never\r\n") == [(OK, "ok")]
    assert isinstance(p.error, ReplyError)
    assert (p.error.code, p.error.message) == (MALFORMED, "Malformed SMTP response line: hello there\r\n")
    assert p.feed(b"250 more\r\n") == []  # nothing more is parsed


def test_an_over_long_line_is_refused():
    p = ReplyParser()
    assert p.feed(b"250 " + b"x" * MAX_REPLY_LINE + b"\r\n") == []
    assert p.error is not None and p.error.message == "Response too long"


def test_an_endless_reply_is_refused_once_over_the_pending_bound():
    p = ReplyParser()
    line = b"250-" + b"x" * 1000 + b"\r\n"
    fed = 0
    while p.error is None:
        assert p.feed(line) == []
        fed += len(line)
    assert fed > MAX_PENDING and p.error.message == "Response too long"


def test_take_reply_leaves_an_incomplete_reply_in_the_buffer():
    buf = bytearray(b"250 done\r\n250-part")
    assert take_reply(buf) == (OK, "done")
    assert take_reply(buf) is None and buf == b"250-part"


def test_non_utf8_text_survives_as_surrogates():
    ((code, text),) = ReplyParser().feed(b"550 caf\xe9\r\n")
    assert code == 550 and text.encode("utf-8", "surrogateescape") == b"caf\xe9"


class _Transport(asyncio.Transport):
    def get_extra_info(self, name, default=None):
        return default


async def _aiosmtplib_reads(stream: bytes, cuts: list[int]) -> tuple[int, str]:
    """One reply as aiosmtplib's SMTPProtocol reads it, fed in the same pieces."""
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    protocol.connection_made(_Transport())
    for piece in _pieces(stream, cuts):
        protocol.data_received(piece)
    response = await protocol.read_response(timeout=1)
    return response.code, response.message


def _pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in zip(edges, edges[1:])]


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)
_reply = st.tuples(st.sampled_from([220, 250, 251, 354, 421, 450, 452, 550, 554]),
                   st.lists(_text, min_size=1, max_size=5))


@settings(max_examples=300, deadline=None)
@given(reply=_reply, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
       lf_only=st.booleans())
def test_the_parser_agrees_with_aiosmtplib(reply, cuts, lf_only):
    code, texts = reply
    end = b"\n" if lf_only else b"\r\n"
    stream = b"".join(f"{code}{'-' if i < len(texts) - 1 else ' '}{t}".encode() + end for i, t in enumerate(texts))
    theirs = asyncio.run(_aiosmtplib_reads(stream, cuts))
    parser = ReplyParser()
    ours = [r for piece in _pieces(stream, cuts) for r in parser.feed(piece)]
    assert ours == [theirs]


@pytest.mark.parametrize("stream", [b"hello\r\n", b"25x ok\r\n", b"250 " + b"y" * MAX_REPLY_LINE + b"\r\n"])
def test_malformed_replies_get_aiosmtplibs_code_and_message(stream):
    with pytest.raises(SMTPResponseException) as theirs:
        asyncio.run(_aiosmtplib_reads(stream, []))
    parser = ReplyParser()
    assert parser.feed(stream) == []
    assert parser.error is not None
    assert (parser.error.code, parser.error.message) == (theirs.value.code, theirs.value.message)


# -- the envelope and the DATA payload ------------------------------------------------------------
def test_the_envelope_is_mail_rcpts_and_data():
    assert envelope("a@example.com", ["r1@dest.org", "r2@dest.org"]) == [
        b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<r1@dest.org>\r\n", b"RCPT TO:<r2@dest.org>\r\n", DATA]


def test_the_null_sender_of_a_dsn():
    assert envelope("", ["r@dest.org"])[0] == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize("address", ['"john doe"@example.com', "Name <a@example.com>", "a@[127.0.0.1]"])
def test_addresses_that_need_quoting_are_quoted_as_aiosmtplib_quotes_them(address):
    assert envelope(address, [address]) == [b"MAIL FROM:" + quote_address(address).encode() + b"\r\n",
                                           b"RCPT TO:" + quote_address(address).encode() + b"\r\n", DATA]


@pytest.mark.parametrize("address", ["a\r\nRCPT TO:<x@evil.org>@example.com", "tab\t@example.com", "é@example.com",
                                     "a@exämple.com"])
def test_control_characters_and_non_ascii_leave_the_envelope_to_aiosmtplib(address):
    assert envelope("a@example.com", [address]) is None
    assert envelope(address, ["r@dest.org"]) is None


def test_rset_and_the_final_dot():
    assert (RSET, DOT) == (b"RSET\r\n", b".\r\n")


@pytest.mark.parametrize("body,wire", [
    (b"line\r\n", b"line\r\n"),
    (b"no final line end", b"no final line end\r\n"),
    (b".leading\r\n..two\r\n.\r\nlast", b"..leading\r\n...two\r\n..\r\nlast\r\n"),
    (b"a.b\r\n .c\r\n", b"a.b\r\n .c\r\n"),
])
def test_the_data_payload_is_dot_stuffed_and_ends_with_crlf(body, wire):
    assert dot_stuffed(body) == wire
