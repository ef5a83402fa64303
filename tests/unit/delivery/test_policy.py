"""Pure delivery decisions: retry schedule, reply classification, upstream ordering, DSNs. No I/O."""

from __future__ import annotations

import email
import random
from collections import Counter
from email import policy as email_policy

import pytest

from relay.events import dsn
from relay.delivery.policy import backoff, is_hard_bounce, outcome_of, weighted_order
from relay.delivery.router import Router
from relay.delivery.upstream import Upstream, UpstreamConfig
from tests.support.replies import (
    INSUFFICIENT,
    LOCAL_ERROR,
    OK,
    REFUSED,
    SENDER_REFUSED,
    TOO_BIG,
    TRANSACTION_FAILED,
    UNAVAILABLE,
)

ORIGINAL = (b"From: App <app@example.com>\r\nTo: rcpt@dest.org\r\nSubject: Quarterly report\r\n"
            b"Message-ID: <orig-1@example.com>\r\n\r\nbody line\r\n.leading dot\r\n")


# -- backoff ------------------------------------------------------------------------------------
class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:  # noqa: D102
        return self.value


def test_backoff_grows_exponentially_at_the_top_of_the_jitter():
    top = _Fixed(0.999999)
    got = [backoff(n, 60, 10_000, top) for n in range(1, 6)]
    assert got == pytest.approx([60, 120, 240, 480, 960], rel=1e-5)


def test_backoff_lower_edge_is_half_the_nominal_delay():
    bottom = _Fixed(0.0)
    assert [backoff(n, 60, 10_000, bottom) for n in range(1, 5)] == [30, 60, 120, 240]


def test_backoff_attempt_zero_and_negative_count_as_first():
    assert backoff(0, 10, 100, _Fixed(0.0)) == 5
    assert backoff(-3, 10, 100, _Fixed(0.0)) == 5


def test_backoff_is_capped_at_retry_max():
    for n in (7, 10, 30, 200):
        assert backoff(n, 60, 3600, _Fixed(0.999999)) <= 3600
        assert backoff(n, 60, 3600, _Fixed(0.0)) == 1800
    assert backoff(1000, 0.2, 1, _Fixed(0.999999)) <= 1


def test_backoff_jitter_stays_within_half_to_full_delay():
    rand = random.Random(1234)
    for attempts in range(1, 12):
        d = min(3600, 60 * 2 ** (attempts - 1))
        values = [backoff(attempts, 60, 3600, rand) for _ in range(300)]
        assert all(d / 2 <= v <= d for v in values)
        assert max(values) - min(values) > d / 4  # actually jittered, not constant


# -- classification ------------------------------------------------------------------------------
@pytest.mark.parametrize("code,state", [(OK, "delivered"), (251, "delivered"), (LOCAL_ERROR, "deferred"),
                                        (UNAVAILABLE, "deferred"), (INSUFFICIENT, "deferred"), (REFUSED, "bounced"),
                                        (TRANSACTION_FAILED, "bounced")])
def test_outcome_of(code, state):
    assert outcome_of(code) == state


@pytest.mark.parametrize("code,reply,hard", [
    (REFUSED, "5.1.1 user unknown", True),
    (REFUSED, "5.1.1 <x@y>: Recipient address rejected", True),
    (SENDER_REFUSED, "5.1.3 bad address syntax", True),
    (TOO_BIG, "5.2.1 mailbox disabled", True),
    (REFUSED, "5.7.1 spam", False),
    (TRANSACTION_FAILED, "5.7.1 message rejected as spam", False),
    (TOO_BIG, "5.3.4 message too big", False),
    (INSUFFICIENT, "4.2.2 mailbox full", False),
    (INSUFFICIENT, "5.1.1 user unknown", False),  # a 4xx is never a hard bounce, whatever the text says
    (OK, "2.0.0 ok", False),
])
def test_is_hard_bounce(code, reply, hard):
    assert is_hard_bounce(code, reply) is hard


# -- upstream ordering -----------------------------------------------------------------------------
def test_weighted_order_is_a_permutation():
    rand = random.Random(7)
    items = ["a", "b", "c", "d"]
    for _ in range(50):
        out = weighted_order(items, [5, 1, 2, 1], rand)
        assert sorted(out) == items


def test_weighted_order_first_pick_follows_weights():
    rand = random.Random(42)
    n = 20_000
    firsts = Counter(weighted_order(["heavy", "light"], [3, 1], rand)[0] for _ in range(n))
    assert firsts["heavy"] / n == pytest.approx(0.75, abs=0.02)
    three = Counter(weighted_order(["a", "b", "c"], [1, 2, 7], rand)[0] for _ in range(n))
    assert three["a"] / n == pytest.approx(0.1, abs=0.02)
    assert three["b"] / n == pytest.approx(0.2, abs=0.02)
    assert three["c"] / n == pytest.approx(0.7, abs=0.02)


def test_weighted_order_equal_weights_is_fair_and_seed_reproducible():
    n = 10_000
    rand = random.Random(99)
    c = Counter(weighted_order(["x", "y"], [1, 1], rand)[0] for _ in range(n))
    assert c["x"] / n == pytest.approx(0.5, abs=0.03)
    a = [weighted_order(list("abcde"), [1, 2, 3, 4, 5], random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def _up(name: str, priority: int = 0, weight: int = 1) -> Upstream:
    return Upstream(UpstreamConfig(id=f"up_{name}", name=name, host="127.0.0.1", port=1, encryption="none",
                                   priority=priority, weight=weight),
                    local_hostname="relay.test", connect_timeout=1, command_timeout=1)


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_router_orders_by_priority_then_skips_open_breakers_until_cooldown():
    clock = _Clock()
    r = Router(threshold=3, cooldown=30, clock=clock)
    a, b, c = _up("a", 0), _up("b", 1), _up("c", 2)
    r.set_ip_pools({"default": [c, b, a]})
    assert [u.name for u in r.order("default")] == ["a", "b", "c"]
    assert r.order("nope") == []
    r.failure(a)
    r.failure(a)
    assert [u.name for u in r.order("default")] == ["a", "b", "c"]  # below the threshold
    r.failure(a)
    assert [u.name for u in r.order("default")] == ["b", "c"]
    clock.t += 29.9
    assert [u.name for u in r.order("default")] == ["b", "c"]
    clock.t += 0.2
    assert [u.name for u in r.order("default")][0] == "a"  # half-open: it gets tried again
    r.success(a)
    assert r.breakers[a.cfg.id].failures == 0
    assert [u.name for u in r.order("default")] == ["a", "b", "c"]


def test_router_half_open_lets_only_one_probe_through():
    clock = _Clock()
    r = Router(threshold=3, cooldown=30, clock=clock)
    a, b = _up("a", 0), _up("b", 1)
    r.set_ip_pools({"default": [a, b]})
    for _ in range(3):
        r.failure(a)
    clock.t += 31
    first = [u.name for u in r.order("default")]
    second = [u.name for u in r.order("default")]  # the probe has not reported back yet
    assert first == ["a", "b"]
    assert second == ["b"]


def test_router_reopens_in_says_when_the_first_open_breaker_lets_a_probe_through():
    clock = _Clock()
    r = Router(threshold=2, cooldown=30, clock=clock)
    a, b = _up("a", 0), _up("b", 1)
    r.set_ip_pools({"default": [a, b], "empty": []})
    assert r.reopens_in("empty") is None and r.reopens_in("nope") is None
    assert r.reopens_in("default") is None  # both healthy
    r.failure(a), r.failure(a)
    clock.t += 10
    assert r.reopens_in("default") is None  # b is still healthy
    r.failure(b), r.failure(b)
    assert r.order("default") == []
    assert r.reopens_in("default") == 20  # a's cooldown ends first
    clock.t += 25
    assert [u.name for u in r.order("default")] == ["a"]  # a is probed now
    assert r.reopens_in("default") is None  # the probe decides; nothing to wait for yet
    r.failure(a)  # the probe failed: a is down for another cooldown
    assert r.reopens_in("default") == 5  # b's ends first now


# -- DSN ------------------------------------------------------------------------------------------------
def _build(failures=(("rcpt@dest.org", "failed", 550, "5.1.1 user unknown"),), original=ORIGINAL) -> bytes:
    return dsn.build_dsn(hostname="relay.test", queue_id="msg_0123456789abcdef", original_sender="app@example.com",
                         original=original, arrival="Mon, 01 Jan 2024 00:00:00 +0000", failures=list(failures),
                         dsn_id="msg_fedcba9876543210")


def _parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email_policy.default)


def test_build_dsn_is_an_rfc3464_report():
    raw = _build()
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only, ready for the wire
    msg = _parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "app@example.com"
    assert "MAILER-DAEMON@relay.test" in msg["From"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == "<msg_fedcba9876543210@relay.test>"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "rcpt@dest.org" in parts[0].get_content()

    per_message, *per_rcpt = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert len(per_rcpt) == 1
    block = per_rcpt[0]
    assert block["Final-Recipient"] == "rfc822; rcpt@dest.org"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert "550 5.1.1 user unknown" in block["Diagnostic-Code"]

    headers = parts[2].get_payload()
    assert "Subject: Quarterly report" in headers
    assert "Message-ID: <orig-1@example.com>" in headers
    assert "body line" not in headers  # headers only, never the body


def test_build_dsn_several_recipients_and_status_fallbacks():
    raw = _build([("a@dest.org", "failed", 550, "5.1.1 user unknown"),
                  ("b@dest.org", "failed", 554, "rejected for policy reasons"),
                  ("c@dest.org", "failed", 451, "message expired after retries; last reply: 4.3.0 later"),
                  ("d@dest.org", "failed", None, "no upstream available")])
    _, *blocks = _parse(raw).get_payload()[1].get_payload()
    got = {b["Final-Recipient"]: (b["Status"], b["Diagnostic-Code"]) for b in blocks}
    assert got["rfc822; a@dest.org"][0] == "5.1.1"
    assert got["rfc822; b@dest.org"][0] == "5.0.0"
    assert got["rfc822; c@dest.org"][0] == "4.0.0"
    assert got["rfc822; d@dest.org"] == ("5.0.0", "x-relay; no upstream available")


def test_is_dsn():
    assert dsn.is_dsn(_build())
    assert not dsn.is_dsn(ORIGINAL)
    # a body line that looks like the marker does not count: only the header block is looked at
    assert not dsn.is_dsn(b"Subject: x\r\n\r\nreport-type=delivery-status\r\nAuto-Submitted: auto-replied\r\n")
    assert dsn.is_dsn(b"Subject: out of office\r\nAuto-Submitted: auto-replied\r\n\r\nbody\r\n")
