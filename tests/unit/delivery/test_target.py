"""The delivery target contract (relay.delivery.target): the router and the scheduler work with any
object that has its members, not only the SMTP ``Upstream``.

A fake target stands in for the upstreams of a running gateway: it refuses or takes the message as
told, and calls the scheduler's dot hooks as the real one does when the final dot goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.delivery.router import Router
from relay.delivery.target import DeliveryTarget, OnDot, TransactionResult, UpstreamUnavailable
from relay.delivery.upstream import Upstream, UpstreamConfig
from tests.conftest import free_port, provision, wait_for
from tests.gateway.test_delivery import events_of, make_msg, rcpt_view, submit, wait_final

TAKEN = (250, "2.0.0 taken by the fake")
TRY_LATER = (451, "4.3.0 fake says try later")


@dataclass(frozen=True)
class FakeSettings:
    id: str
    priority: int = 0
    weight: int = 1


class FakeTarget:
    """Takes every transaction (``refuse``: raises UpstreamUnavailable instead), recording it."""

    def __init__(self, name: str, priority: int = 0, refuse: tuple[int, str] | None = None,
                 fault: Exception | None = None) -> None:
        self.fault = fault  # raised by send(), as a bug in our code or a library's would be
        self._name = name
        self.cfg = FakeSettings(id=f"fake_{name}", priority=priority)
        self.idle_timeout = 60.0
        self.refuse = refuse
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.closed = 0

    @property
    def name(self) -> str:
        return self._name

    async def send(self, mail_from: str, recipients: list[str], body: bytes, on_dot: OnDot) -> TransactionResult:
        self.sent.append((mail_from, list(recipients), body))
        if self.fault is not None:
            raise self.fault
        if self.refuse is not None:
            raise UpstreamUnavailable(*self.refuse)
        hooks = on_dot(list(recipients))  # the final dot goes: journal it, start the store's marker
        hooks.journal()
        marker = hooks.after()
        if marker is not None:
            await marker
        return TransactionResult(self.name, {r: TAKEN for r in recipients})

    def set_timeouts(self, connect: float, command: float) -> None:
        pass

    def close_idle(self, max_idle: float | None = None) -> None:
        self.closed += 1

    async def probe(self) -> dict[str, Any]:
        return {"success": True, "message": "SMTP connection successful", "latencyMs": 0}


def _targets() -> tuple[DeliveryTarget, DeliveryTarget]:
    """(For mypy: both kinds are delivery targets.)"""
    real = Upstream(UpstreamConfig(id="up_real", name="real", host="127.0.0.1", port=1, encryption="none"),
                    local_hostname="relay.test", connect_timeout=1, command_timeout=1)
    return real, FakeTarget("fake")


def test_the_router_orders_fake_and_real_targets_alike():
    real, fake = _targets()
    r = Router(threshold=1, cooldown=30)
    r.set_ip_pools({"default": [fake, real]})
    assert {u.name for u in r.order("default")} == {"real", "fake"}
    r.failure(fake)
    assert [u.name for u in r.order("default")] == ["real"]
    assert r.all_upstreams() == [fake, real]


async def test_the_scheduler_delivers_through_fake_targets_with_failover(gateway_factory, monkeypatch):
    gw = await gateway_factory(delivery={"lease_seconds": 2.0})
    p = provision(gw, free_port())  # (a real upstream that nothing answers; replaced below)
    first = FakeTarget("first", priority=0, refuse=TRY_LATER)
    second = FakeTarget("second", priority=1)
    gw.router.set_ip_pools({"default": [first, second]})
    monkeypatch.setattr(gw, "load_upstreams", lambda recs=None: None)  # keep the fakes in place

    raw, mid = make_msg(["a@dest.org", "b@dest.org"], "through fakes")
    (qid,) = await submit(gw, p.key, [(["a@dest.org", "b@dest.org"], raw)])
    (view,) = await wait_final(gw, qid)

    for addr in ("a@dest.org", "b@dest.org"):
        r = rcpt_view(view, addr)
        assert (r.state, r.attempts, r.upstream, r.last_code, r.last_reply) == ("delivered", 1, "second", *TAKEN)
        assert [e.type for e in events_of(view, addr)] == ["accepted", "delivered"]
    mine = [s for s in second.sent if mid.encode() in s[2]]
    assert [(s[0], s[1]) for s in mine] == [("app@example.com", ["a@dest.org", "b@dest.org"])]
    assert sum(mid.encode() in s[2] for s in first.sent) == 1  # tried first, refused, nothing delivered
    assert gw.router.breakers["fake_first"].failures >= 1 and gw.router.breakers["fake_second"].failures == 0
    journaled = gw.scheduler.journal.entries()  # the dot hooks ran: the released dot was journaled
    assert (qid, "a@dest.org", 0) in journaled and (qid, "b@dest.org", 0) in journaled

    await gw.stop(grace=1)
    assert first.closed >= 1 and second.closed >= 1  # the scheduler closes idle sessions at stop


async def test_a_fault_while_delivering_defers_with_backoff_and_never_holds_the_lease(gateway_factory, monkeypatch):
    gw = await gateway_factory(delivery={"retry_base": 30, "retry_max": 60})
    p = provision(gw, free_port())
    broken = FakeTarget("broken", fault=UnicodeEncodeError("ascii", "b\x0bad", 1, 2, "not ascii"))
    gw.router.set_ip_pools({"default": [broken]})
    monkeypatch.setattr(gw, "load_upstreams", lambda recs=None: None)

    raw, mid = make_msg(["a@dest.org"], "a fault")
    (qid,) = await submit(gw, p.key, [(["a@dest.org"], raw)])
    await wait_for(lambda: rcpt_view(gw.store.queue.show(qid), "a@dest.org").attempts == 1)
    r = rcpt_view(gw.store.queue.show(qid), "a@dest.org")
    assert (r.state, r.last_code) == ("deferred", 451)
    assert r.last_reply == "local error while delivering (UnicodeEncodeError); will retry"
    assert r.next_attempt_at is not None  # due again after the backoff, not held by this node
    await wait_for(lambda: qid not in gw.scheduler.inflight)  # the attempt ended; nothing holds it
    broken.fault = None  # fixed: the next attempt delivers
    gw.store.queue.retry(qid)
    gw.scheduler.wake()
    await wait_for(lambda: rcpt_view(gw.store.queue.show(qid), "a@dest.org").state == "delivered")
