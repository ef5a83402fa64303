"""The ``quota`` policy end to end: caps hit exactly at N under concurrent clients, across two
gateways and two ``relay serve`` processes on one PostgreSQL, warm-up following the pool's age on a
controllable clock, and reservations given back when a transaction is not committed.

One unit is one recipient, reserved at RCPT: over a limit the first recipient of a transaction gets
``451 4.7.1``, a later one ``452 4.5.3``; never a 5xx.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest

from policies.quota_rules import (UNLIMITED, Rate, parse_rate, parse_warmup, pool_day, recipients_left, warmup_cap)
from relay.services.admin import Admin
from relay.ops.config import load_settings
from relay.vocab import StoreError
from relay.secrets import load_or_create_master_key
from relay.store import Store, utcnow
from policies.quota_store import QuotaStore
from policies.suppression_store import NewSuppression, Suppressions
from tests.conftest import free_port, port_of, provision, wait_for
from tests.gateway.test_policies import OK_MAIL, OK_RCPT, delivered, fold, send, words
from tests.gateway.test_submission import message, reply, smtp_messages
from tests.support.replies import INSUFFICIENT, LOCAL_ERROR, OK, REFUSED

FIRST_OVER = (LOCAL_ERROR, "4.7.1 Too much mail, try again later")
MORE_OVER = (INSUFFICIENT, "4.5.3 Too many recipients, try again later")


class Clock:
    """A controllable UTC clock: given to the gateway, read by the quota policy at every decision."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def quotas(gw) -> QuotaStore:
    return QuotaStore(gw.store.sessions, gw.store.reads)


def used_today(gw, target: str, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    return quotas(gw).usage([target], now.date(), now)[target].used_today


def account_target(gw, name: str = "acme") -> str:
    return f"account:{gw.store.directory.get_account(name).id}"


async def send_to(port: int, key: str, sender: str, rcpts: list[str]):
    """One transaction on an smtps port: (RCPT replies, DATA reply or None)."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, validate_certs=False, timeout=20)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.login("apikey", key)
        assert await reply(smtp.mail(sender)) == OK_MAIL
        replies = [await reply(smtp.rcpt(r)) for r in rcpts]
        data = None
        if any(c == 250 for c, _ in replies):
            data = await reply(smtp.data(message(from_=sender, to=rcpts[0])))
        return replies, data
    finally:
        smtp.close()


def tally(results) -> tuple[int, int]:
    """(accepted, refused-over-quota) over single-recipient transactions; anything else fails."""
    ok = over = 0
    for replies, data in results:
        assert len(replies) == 1
        if replies[0] == OK_RCPT:
            assert data is not None and data[0] == 250, data
            ok += 1
        else:
            assert replies[0] == FIRST_OVER and data is None, replies
            over += 1
    return ok, over


# -- pure rules ------------------------------------------------------------------------------------------
def test_rate_and_warmup_syntax():
    assert parse_rate("10/s") == Rate(10, 1) and parse_rate("600 / minute") == Rate(600, 60)
    assert parse_rate("5000/h") == Rate(5000, 3600) and str(Rate(5000, 3600)) == "5000/h"
    for bad in ("10", "10/d", "-1/s", "x/s", 10):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert parse_warmup("1:50, 2:100,5:2000") == ((1, 50), (2, 100), (5, 2000))
    assert parse_warmup([[1, 50], [3, 200]]) == ((1, 50), (3, 200))
    for bad in ("", "0:5", "2:5,1:9", "1:5,1:6", "1-5", "1:-5", [[1]], "a:b"):
        with pytest.raises(ValueError):
            parse_warmup(bad)
    schedule = parse_warmup("1:50,2:100,5:2000")
    assert [warmup_cap(schedule, d) for d in range(1, 8)] == [50, 100, 100, 100, 2000, None, None]
    assert pool_day(dt.date(2026, 1, 30), dt.date(2026, 2, 1)) == 3
    assert recipients_left(["a", "b", "a", "c"], ["a", "c"]) == [1, 2]


# -- exact caps ------------------------------------------------------------------------------------------
async def test_daily_cap_is_exact_under_concurrent_clients(gateway_factory, sink_factory, db_url):
    sink = await sink_factory()
    # the cap here is the [policies.quota] default for every account
    gw = await gateway_factory(db_url, policies={"enabled": ["quota"], "quota": {"account_daily": 10}})
    p = provision(gw, sink.port)
    results = await asyncio.gather(*(send(gw, p, [f"r{i}@dest.org"]) for i in range(16)))
    assert tally(results) == (10, 6)
    assert len(smtp_messages(gw)) == 10
    assert used_today(gw, account_target(gw)) == 10
    await wait_for(lambda: len(delivered(sink, p)) == 10)


async def test_rate_is_exact_under_concurrent_clients_and_refills(gateway_factory, sink_factory, db_url):
    sink = await sink_factory()
    clock = Clock(utcnow())
    gw = await gateway_factory(db_url, policies={"enabled": ["quota"]}, clock=clock)
    p = provision(gw, sink.port)
    key_id = gw.store.directory.list_api_keys("acme")[0].id
    quotas(gw).set_limit(target=f"key:{key_id}", kind="key", account_id=None, subject=key_id, ip_pool=None,
                         rate=Rate(10, 1))
    results = await asyncio.gather(*(send(gw, p, [f"r{i}@dest.org"]) for i in range(14)))
    assert tally(results) == (10, 4)  # a burst of N, then nothing: the clock stands still
    clock.advance(seconds=0.5)  # 10/s refills 5 tokens in half a second
    results = await asyncio.gather(*(send(gw, p, [f"s{i}@dest.org"]) for i in range(9)))
    assert tally(results) == (5, 4)
    assert len(smtp_messages(gw)) == 15


async def test_caps_are_exact_across_two_gateways_on_one_postgresql(gateway_factory, sink_factory, pg_url):
    sink = await sink_factory()
    clock = Clock(utcnow())
    gw1 = await gateway_factory(pg_url, policies={"enabled": ["quota"]}, clock=clock)
    gw2 = await gateway_factory(pg_url, policies={"enabled": ["quota"]}, clock=clock,
                                secrets={"master_key_file": str(gw1.settings.master_key_path)})
    p = provision(gw1, sink.port)
    gw2.load_upstreams()
    key_id = gw1.store.directory.list_api_keys("acme")[0].id
    acc = gw1.store.directory.get_account("acme")
    q = quotas(gw1)
    q.set_limit(target=f"key:{key_id}", kind="key", account_id=acc.id, subject=key_id, ip_pool=None, rate=Rate(5, 60))
    q.set_limit(target=f"account:{acc.id}", kind="account", account_id=acc.id, subject="acme", ip_pool=None, daily=8)

    def burst(tag: str):
        return asyncio.gather(*(send(gw, p, [f"{tag}{i}@dest.org"])
                                for i, gw in enumerate([gw1, gw2] * 6)))

    assert tally(await burst("a")) == (5, 7)  # the key's rate: 5 at once
    clock.advance(seconds=60)  # the bucket is full again, but the account has 3 left today
    assert tally(await burst("b")) == (3, 9)
    assert used_today(gw1, f"account:{acc.id}", clock.now) == 8
    assert len(smtp_messages(gw1)) == 8


# -- two relay serve processes on one PostgreSQL -------------------------------------------------------------
class Node:
    def __init__(self, tmp: Path, pg_url: str, master_key: Path) -> None:
        self.tmp = tmp
        tmp.mkdir()
        self.smtps = free_port()
        self.config = tmp / "relay.toml"
        self.config.write_text(
            f'data_dir = "{tmp / "data"}"\nhostname = "relay.test"\n'
            f'[smtp]\nsubmission = ""\nsmtps = "127.0.0.1:{self.smtps}"\n[api]\nlisten = ""\n'
            f'[database]\nurl = "{pg_url}"\n[secrets]\nmaster_key_file = "{master_key}"\n'
            f'[delivery]\npoll_interval = 0.2\nverify_certificates = false\n'
            f'[policies]\nenabled = ["quota"]\n[policies.quota]\ncache_ttl = 0\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env["RELAY_CONFIG"] = str(self.config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        relay = Path(sys.executable).with_name("relay")
        self.log = open(self.tmp / "serve.log", "wb")
        self.proc = subprocess.Popen([str(relay) if relay.exists() else "relay", "serve"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            assert self.proc is not None and self.proc.poll() is None, (self.tmp / "serve.log").read_text()
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.smtps)
                w.close()
                return
            except OSError:
                assert loop.time() < deadline, (self.tmp / "serve.log").read_text()
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def test_caps_are_exact_across_two_relay_processes_on_one_postgresql(tmp_path, sink_factory, pg_url):
    sink = await sink_factory()
    master = tmp_path / "master.key"
    nodes = [Node(tmp_path / f"n{i}", pg_url, master) for i in range(2)]
    settings = load_settings(nodes[0].config, env={})
    store = Store(settings.database_url)
    store.migrate()
    admin = Admin(settings, store, load_or_create_master_key(master, env={}))
    admin.create_account("acme")
    admin.add_domain("example.com", "acme")
    admin.verify_domain("example.com", trust=True)
    admin.add_upstream(name="sink", ip_pool="default", host="127.0.0.1", port=sink.port, encryption="none")
    admin.add_alias("app@example.com", account="acme")
    admin.verify_alias(email="app@example.com")
    key, rec = admin.create_key("acme", ["send"])
    acc = store.directory.get_account("acme")
    q = QuotaStore(store.sessions, store.reads)
    q.set_limit(target=f"key:{rec.id}", kind="key", account_id=acc.id, subject=rec.id, ip_pool=None, rate=Rate(7, 3600))
    try:
        for n in nodes:
            n.start()
        await asyncio.gather(*(n.ready() for n in nodes))

        def burst(tag: str):
            return asyncio.gather(*(send_to(nodes[i % 2].smtps, key, "app@example.com", [f"{tag}{i}@dest.org"])
                                    for i in range(16)))

        assert tally(await burst("a")) == (7, 9)  # 7 per hour for the key, whichever process is asked
        # new limits reach the running processes (cache_ttl = 0 here): the key is freed, the account
        # gets 10 a day (counted from now: a target is counted while it has a limit)
        q.set_limit(target=f"key:{rec.id}", kind="key", account_id=acc.id, subject=rec.id, ip_pool=None,
                    rate=UNLIMITED)
        q.set_limit(target=f"account:{acc.id}", kind="account", account_id=acc.id, subject="acme", ip_pool=None,
                    daily=10)
        assert tally(await burst("b")) == (10, 6)
        now = utcnow()
        assert q.usage([f"account:{acc.id}"], now.date(), now)[f"account:{acc.id}"].used_today == 10
        assert sum(1 for m in store.queue.list_messages(limit=100) if m.source == "smtp") == 17
    finally:  # stopped off the event loop: the sink that the processes talk to lives on it
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, n.stop) for n in nodes))
        store.close()


# -- warm-up ----------------------------------------------------------------------------------------------
async def test_warmup_caps_follow_the_pool_age(gateway_factory, sink_factory):
    sink = await sink_factory()
    clock = Clock(utcnow())
    gw = await gateway_factory(policies={"enabled": ["quota"], "quota": {"cache_ttl": 0}}, clock=clock)
    p = provision(gw, sink.port)
    created = dict(gw.store.directory.list_ip_pools())["default"]
    clock.now = created + dt.timedelta(minutes=1)
    quotas(gw).set_limit(target="pool:default", kind="pool", account_id=None, subject="default", ip_pool="default",
                         warmup=parse_warmup("1:3,2:5,4:8"))

    async def day(n_rcpts: int, expect_ok: int) -> None:
        rcpts = [f"d{clock.now.day}r{i}@dest.org" for i in range(n_rcpts)]
        replies, data = await send(gw, p, rcpts)
        assert replies == [OK_RCPT] * expect_ok + [MORE_OVER] * (n_rcpts - expect_ok)
        assert data[0] == 250
        replies, data = await send(gw, p, ["late@dest.org"])  # the day's cap is used up
        assert (replies, data) == ([FIRST_OVER], None)

    await day(5, 3)  # day 1: 3
    clock.advance(days=1)
    await day(6, 5)  # day 2: 5
    clock.advance(days=1)
    await day(6, 5)  # day 3: still 5 (the last scheduled day before it)
    clock.advance(days=1)
    await day(9, 8)  # day 4: 8
    clock.advance(days=1)
    replies, data = await send(gw, p, [f"free{i}@dest.org" for i in range(12)])
    assert replies == [OK_RCPT] * 12 and data[0] == 250  # day 5: the warm-up is over
    # the pool got new IPs: its warm-up starts again today
    quotas(gw).set_limit(target="pool:default", kind="pool", account_id=None, subject="default", ip_pool="default",
                         warmup_start=clock.now.date())
    await day(4, 3)  # day 1 again: 3 (what went out while the pool was unlimited was not counted)
    assert sum(len(m.recipients) for m in smtp_messages(gw)) == 3 + 5 + 5 + 8 + 12 + 3


# -- reservations given back ----------------------------------------------------------------------------------
async def test_reservations_of_uncommitted_transactions_are_given_back(gateway_factory, sink_factory, monkeypatch):
    sink = await sink_factory()
    gw = await gateway_factory(policies={"enabled": ["quota", "suppression", "limits"],
                                         "quota": {"account_daily": 3}, "suppression": {"cache_ttl": 0}})
    p = provision(gw, sink.port)
    target = account_target(gw)
    acc = gw.store.directory.get_account("acme")
    Suppressions(gw.store.sessions, gw.store.reads).add(acc.id, [NewSuppression("gone@dest.org", "hard_bounce")])
    rcpts = ["r1@dest.org", "r2@dest.org", "r3@dest.org"]

    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.login("apikey", p.key)
    # RSET
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert [await reply(smtp.rcpt(r)) for r in rcpts + ["r4@dest.org"]] == [OK_RCPT] * 3 + [MORE_OVER]
    assert used_today(gw, target) == 3
    assert await reply(smtp.rset()) == (OK, "2.0.0 OK")
    await wait_for(lambda: used_today(gw, target) == 0)
    # a recipient refused by a later policy (suppression runs after quota here): given back at commit
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert [await reply(smtp.rcpt(r)) for r in ["gone@dest.org", "r1@dest.org"]] == \
        [(REFUSED, "5.7.1 Recipient address rejected"), OK_RCPT]
    assert used_today(gw, target) == 2
    code, _ = await reply(smtp.data(message(from_=p.alias)))
    assert code == OK and used_today(gw, target) == 1
    # refused at DATA by another policy
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("r2@dest.org")) == OK_RCPT
    assert await reply(smtp.data(message(from_=p.alias, subject=fold(words(999), sep=" ")))) == \
        (REFUSED, "5.6.0 Subject too long")
    assert used_today(gw, target) == 1
    # the store fails at commit: 451, and nothing stays counted
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("r2@dest.org")) == OK_RCPT

    async def broken_commit(new):
        raise StoreError("disk full")

    monkeypatch.setattr(gw.pipeline, "commit", broken_commit)
    assert await reply(smtp.data(message(from_=p.alias))) == (LOCAL_ERROR, "4.3.0 Temporary local problem, try again later")
    monkeypatch.undo()
    assert used_today(gw, target) == 1
    # a new EHLO in the middle of a transaction
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("r2@dest.org")) == OK_RCPT
    await smtp.ehlo()
    await wait_for(lambda: used_today(gw, target) == 1)
    # QUIT in the middle of a transaction
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("r2@dest.org")) == OK_RCPT
    assert used_today(gw, target) == 2
    await smtp.quit()
    await wait_for(lambda: used_today(gw, target) == 1)
    # the connection drops in the middle of a transaction
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.login("apikey", p.key)
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert [await reply(smtp.rcpt(r)) for r in rcpts] == [OK_RCPT, OK_RCPT, MORE_OVER]
    assert used_today(gw, target) == 3
    smtp.close()
    await wait_for(lambda: used_today(gw, target) == 1)
    # what is left of the day is still there to use, exactly
    replies, data = await send(gw, p, rcpts)
    assert replies == [OK_RCPT, OK_RCPT, MORE_OVER] and data[0] == 250
    assert used_today(gw, target) == 3
    assert [sorted(r.state == "suppressed" for r in m.recipients)
            for m in sorted(smtp_messages(gw), key=lambda m: m.created_at)
            ] == [[False, True], [False, False]]  # the suppressed one stored (never sent), never counted


async def test_a_stored_limit_overrides_the_default_and_unlimited_lifts_it(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(policies={"enabled": ["quota"],
                                         "quota": {"key_daily": 1, "account_rate": "100/s", "cache_ttl": 0}})
    p = provision(gw, sink.port)
    key_id = gw.store.directory.list_api_keys("acme")[0].id
    replies, data = await send(gw, p, ["a@dest.org", "b@dest.org"])
    assert replies == [OK_RCPT, MORE_OVER]
    quotas(gw).set_limit(target=f"key:{key_id}", kind="key", account_id=None, subject=key_id, ip_pool=None,
                         daily=UNLIMITED)
    replies, data = await send(gw, p, ["c@dest.org", "d@dest.org"])
    assert replies == [OK_RCPT, OK_RCPT] and data[0] == 250
