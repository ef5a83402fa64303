"""Policy hooks end to end: the contract, third-party policies from entry points, a policy that
raises, and the built-in ``limits`` and ``suppression`` policies over real SMTP on loopback.

Every refusal is asserted with its exact reply and with what was (not) stored and delivered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import inspect
import uuid
from pathlib import Path
from types import SimpleNamespace

import aiosmtplib
import pytest

from policies.spec import HOOKS, SIZE, PolicySpec
from relay.vocab import ConfigError
from relay.submission.policyset import load as load_policies
from relay.store import utcnow
from policies.suppression_store import NewSuppression, Suppressions
from tests.conftest import port_of, provision, wait_for
from tests.gateway.test_submission import client, message, received_from, reply, smtp_messages
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

OK_MAIL = (OK, "2.1.0 Sender OK")
OK_RCPT = (OK, "2.1.5 Recipient OK")
TEMP_LOCAL = (LOCAL_ERROR, "4.3.0 Temporary local problem, try again later")
SUPPRESSED = (REFUSED, "5.7.1 Recipient address rejected")
TOO_MANY_RCPTS = (INSUFFICIENT, "4.5.3 Too many recipients")


# -- helpers ---------------------------------------------------------------------------------------------
def install_distribution(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A distribution laid out as pip installs it: its modules and a .dist-info with entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"  # the wheel naming: name normalized with _
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[relay.policies]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


THIRD_PARTY = '''
"""A third party's policies, as its own package would ship them."""
from policies.spec import Verdict

CALLS = []


class Recorder:
    def __init__(self, options, services):
        self.tag = options.get("tag", "recorder")
        self.sessions = services.sessions  # services: a PolicyServices, never the gateway

    async def on_rcpt(self, ctx, recipient):
        CALLS.append((self.tag, "on_rcpt", recipient))

    async def on_commit(self, ctx, queue_id):
        CALLS.append((self.tag, "on_commit", tuple(ctx.recipients), queue_id))

    async def after_delivery(self, ctx, recipient, upstream):
        CALLS.append((self.tag, "after_delivery", recipient, ctx.extra["queue_id"]))


class Blocker:
    """Refuses recipients starting with one of ``prefixes``, with the configured reply."""

    def __init__(self, options):  # a constructor without services is accepted too
        self.tag = options["tag"]
        self.prefixes = tuple(options["prefixes"])
        self.code, self.enhanced, self.text = options["code"], options["enhanced"], options["text"]

    async def on_rcpt(self, ctx, recipient):
        CALLS.append((self.tag, "on_rcpt", recipient))
        if recipient.startswith(self.prefixes):
            return Verdict.reject(self.code, self.enhanced, self.text, http_status=400, reason=self.tag)
        return Verdict.accept()


class Raiser:
    def __init__(self, options, services):
        self.at_connect = options.get("at_connect", False)

    async def on_connect(self, ctx):
        if self.at_connect:
            raise RuntimeError("broken at connect")

    async def on_rcpt(self, ctx, recipient):
        if recipient.startswith("boom"):
            raise RuntimeError("broken at RCPT")

    async def on_data(self, ctx, message):
        if "boom" in str(message["Subject"]):
            raise ValueError("broken at DATA")


class Gatekeeper:
    def __init__(self, options, services):
        self.temporary = options.get("temporary", False)

    async def on_connect(self, ctx):
        if self.temporary:
            return Verdict.tempfail(451, "4.7.0", "Busy, come back later")
        return Verdict.reject(550, "5.7.1", "Not from there")
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install the THIRD_PARTY policies under a fresh module name; returns (entry-point names, module)."""
    mod = f"relay_tp_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site-packages"
    install_distribution(site, mod.replace("_", "-"), {mod: THIRD_PARTY}, {
        "tp_recorder": f"{mod}:Recorder", "tp_first": f"{mod}:Blocker", "tp_second": f"{mod}:Blocker",
        "tp_raiser": f"{mod}:Raiser", "tp_gatekeeper": f"{mod}:Gatekeeper"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return importlib.import_module(mod)


async def session(gw, key: str, listener: str = "smtps") -> aiosmtplib.SMTP:
    smtp = await client(gw, listener)
    await smtp.login("apikey", key)
    return smtp


async def send(gw, p, rcpts: list[str], data: bytes | None = None):
    """One transaction: (RCPT replies, DATA reply or None when no recipient was accepted)."""
    smtp = await session(gw, p.key)
    try:
        assert await reply(smtp.mail(p.alias)) == OK_MAIL
        replies = [await reply(smtp.rcpt(r)) for r in rcpts]
        data_reply = None
        if any(code == OK for code, _ in replies):
            data_reply = await reply(smtp.data(data or message(from_=p.alias, to=", ".join(rcpts[:3]))))
        return replies, data_reply
    finally:
        smtp.close()


async def policy_gateway(gateway_factory, sink_factory, enabled: list[str], db_url: str | None = None, **tables):
    sink = await sink_factory()
    gw = await gateway_factory(db_url, policies={"enabled": enabled, **tables})
    return gw, sink, provision(gw, sink.port)


def fold(items: list[str], sep: str = ",") -> str:
    """Items joined by ``sep`` as a header value folded onto lines of at most 78 characters."""
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(sep) + len(item) > 70:
            lines.append(line + sep.rstrip())
            line = item
        else:
            line = f"{line}{sep}{item}" if line else item
    return "\r\n ".join(lines + [line])


def words(n: int) -> list[str]:
    """Words whose text, joined by single spaces, is exactly n characters long."""
    text = ("subject " * (n // 8 + 1))[:n]
    assert len(text) == n and not text.endswith(" ")
    return text.split(" ")


def delivered(sink, p) -> list[list[str]]:
    """Recipient lists of the messages the sink got from the test's alias (not the system mail)."""
    return [sorted(r.rcpt_tos) for r in received_from(sink, p.alias)]


def stored_rcpts(gw) -> list[list[str]]:
    return [sorted(r.address for r in m.recipients) for m in smtp_messages(gw)]


# -- the contract ----------------------------------------------------------------------------------------
def test_every_hook_is_documented_in_the_spec():
    for hook in HOOKS:
        fn = getattr(PolicySpec, hook)
        assert inspect.iscoroutinefunction(fn) and len(inspect.getdoc(fn)) > 40, hook


def test_builtins_are_registered_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="relay.policies")}
    assert names["limits"] == "policies.limits:LimitsPolicy"
    assert names["suppression"] == "policies.suppression:SuppressionPolicy"
    assert names["quota"] == "policies.quota:QuotaPolicy"


async def test_third_party_policy_is_loaded_ordered_and_obeyed(gateway_factory, sink_factory, third_party):
    first = {"tag": "first", "prefixes": ["both-"], "code": 553, "enhanced": "5.1.3", "text": "Not here"}
    second = {"tag": "second", "prefixes": ["both-", "second-"], "code": 554, "enhanced": "5.7.1", "text": "Nor here"}
    gw, sink, p = await policy_gateway(gateway_factory, sink_factory, ["tp_first", "tp_recorder", "tp_second"],
                                       tp_first=first, tp_second=second, tp_recorder={"tag": "rec"})
    assert [name for name, _ in gw.policies.policies] == ["tp_first", "tp_recorder", "tp_second"]
    calls = third_party.CALLS
    replies, data = await send(gw, p, ["both-1@dest.org", "second-1@dest.org", "ok@dest.org"])
    # the first refusing verdict wins and the later policies are not asked; accept lets the next one speak
    assert replies == [(SENDER_REFUSED, "5.1.3 Not here"), (TRANSACTION_FAILED, "5.7.1 Nor here"), OK_RCPT]
    assert [c for c in calls if c[1] == "on_rcpt"] == [("first", "on_rcpt", "both-1@dest.org"),
                         ("first", "on_rcpt", "second-1@dest.org"), ("rec", "on_rcpt", "second-1@dest.org"),
                         ("second", "on_rcpt", "second-1@dest.org"),
                         ("first", "on_rcpt", "ok@dest.org"), ("rec", "on_rcpt", "ok@dest.org"),
                         ("second", "on_rcpt", "ok@dest.org")]
    assert data[0] == 250
    await wait_for(lambda: delivered(sink, p) == [["ok@dest.org"]])
    assert stored_rcpts(gw) == [["ok@dest.org"]]
    queue_id = data[1].rsplit(" ", 1)[1]
    assert ("rec", "on_commit", ("ok@dest.org",), queue_id) in calls  # before the 250
    await wait_for(lambda: ("rec", "after_delivery", "ok@dest.org", queue_id) in calls)

    # the same policies in the other order: the other one's verdict wins
    calls.clear()
    gw2, _, p2 = await policy_gateway(gateway_factory, sink_factory, ["tp_second", "tp_first"],
                                      tp_first=first, tp_second=second)
    replies, _ = await send(gw2, p2, ["both-2@dest.org"])
    assert replies == [(TRANSACTION_FAILED, "5.7.1 Nor here")]
    assert [c for c in calls if c[1] == "on_rcpt"] == [("second", "on_rcpt", "both-2@dest.org")]


def test_duplicate_names_unknown_names_and_bad_settings_stop_start_up(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_distribution(site, "relay-dupe-a", {"relay_dupe_a": "class P:\n    pass\n"}, {"dupe": "relay_dupe_a:P"})
    install_distribution(site, "relay-dupe-b", {"relay_dupe_b": "class P:\n    pass\n"}, {"dupe": "relay_dupe_b:P"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    services = SimpleNamespace(store=None, runner=None, settings=None)
    with pytest.raises(ConfigError, match=r"two installed policies are named 'dupe' "
                                          r"\(relay_dupe_\w:P and relay_dupe_\w:P\)"):
        load_policies(["limits"], {}, services)
    monkeypatch.undo()
    importlib.invalidate_caches()

    with pytest.raises(ConfigError, match=r"^config: policies.enabled: 'greylist' is not installed "
                                          r"\(installed: .*limits, quota, suppression"):
        load_policies(["limits", "greylist"], {}, services)
    with pytest.raises(ConfigError, match=r"^config: policies.quota: settings for a policy that is not enabled$"):
        load_policies(["limits"], {"quota": {"account_daily": 5}}, services)
    with pytest.raises(ConfigError, match=r"^config: policies.limits.max_to: invalid value 'many' "
                                          r"\(expected an integer >= 1\)$"):
        load_policies(["limits"], {"limits": {"max_to": "many"}}, services)
    with pytest.raises(ConfigError, match=r"^config: policies.limits.max_too: unknown key"):
        load_policies(["limits"], {"limits": {"max_too": 5}}, services)
    store = SimpleNamespace(sessions=None, reads=None)
    with pytest.raises(ConfigError, match=r"^config: policies.quota.account_rate: invalid value '10/x' "
                                          r"\(expected N/s, N/m or N/h"):
        load_policies(["quota"], {"quota": {"account_rate": "10/x"}}, SimpleNamespace(store=store))
    with pytest.raises(ConfigError, match=r"^config: policies.quota.pool_warmup: invalid value '2:10,1:5'"):
        load_policies(["quota"], {"quota": {"pool_warmup": "2:10,1:5"}}, SimpleNamespace(store=store))
    with pytest.raises(ConfigError, match=r"^config: policies.suppression.cache_ttl: invalid value -1"):
        load_policies(["suppression"], {"suppression": {"cache_ttl": -1}}, SimpleNamespace(store=store))


async def test_gateway_does_not_start_with_a_policy_that_is_not_installed(gateway_factory):
    with pytest.raises(ConfigError, match="'greylist' is not installed"):
        await gateway_factory(start=False, policies={"enabled": ["greylist"]})


async def test_a_policy_that_raises_tempfails_and_nothing_is_stored(gateway_factory, sink_factory, third_party):
    gw, sink, p = await policy_gateway(gateway_factory, sink_factory, ["tp_raiser"])
    smtp = await session(gw, p.key)
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("boom@dest.org")) == TEMP_LOCAL  # that recipient only
    assert await reply(smtp.rcpt("fine@dest.org")) == OK_RCPT
    assert await reply(smtp.data(message(from_=p.alias, subject="boom"))) == TEMP_LOCAL
    # the session survives: the next transaction on the same connection goes through
    assert await reply(smtp.noop()) == (OK, "2.0.0 OK")
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("fine@dest.org")) == OK_RCPT
    code, text = await reply(smtp.data(message(from_=p.alias, subject="calm")))
    assert code == OK, text
    await smtp.quit()
    await wait_for(lambda: delivered(sink, p) == [["fine@dest.org"]])
    assert [m.subject for m in smtp_messages(gw)] == ["calm"]  # nothing of the failed transaction

    # raising at connect: the client is told to come back, never greeted
    gw2, _, _ = await policy_gateway(gateway_factory, sink_factory, ["tp_raiser"], tp_raiser={"at_connect": True})
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
        await client(gw2, "smtps")
    assert (info.value.code, info.value.message) == (UNAVAILABLE, "4.3.0 Temporary local problem, try again later")


async def test_on_connect_verdicts_replace_the_greeting(gateway_factory, sink_factory, third_party):
    gw, _, _ = await policy_gateway(gateway_factory, sink_factory, ["tp_gatekeeper"])
    gw2, _, _ = await policy_gateway(gateway_factory, sink_factory, ["tp_gatekeeper"],
                                     tp_gatekeeper={"temporary": True})
    for g, expected in ((gw, (TRANSACTION_FAILED, "5.7.1 Not from there")), (gw2, (UNAVAILABLE, "4.7.0 Busy, come back later"))):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(g, "submission"))
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == f"{expected[0]} {expected[1]}\r\n".encode()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()


# -- suppression ---------------------------------------------------------------------------------------
async def test_suppressed_recipient_is_refused_and_the_others_are_delivered(gateway_factory, sink_factory):
    gw, sink, p = await policy_gateway(gateway_factory, sink_factory, ["suppression"],
                                       suppression={"cache_ttl": 0})
    acc = gw.store.directory.get_account("acme")
    supp = Suppressions(gw.store.sessions, gw.store.reads)
    past = utcnow() - dt.timedelta(minutes=1)
    supp.add(acc.id, [NewSuppression("gone@dest.org", "hard_bounce", "550 5.1.1 no such user"),
                      NewSuppression("left@dest.org", "unsubscribe"),
                      NewSuppression("was@dest.org", "manual", expires_at=past)])
    gw.store.directory.create_account("other")
    supp.add(gw.store.directory.get_account("other").id, [NewSuppression("a@dest.org", "complaint")])

    replies, data = await send(gw, p, ["a@dest.org", "Gone@Dest.ORG", "b@dest.org", "left@dest.org", "was@dest.org"])
    assert replies == [OK_RCPT, SUPPRESSED, OK_RCPT, SUPPRESSED, OK_RCPT]
    assert data[0] == 250
    await wait_for(lambda: delivered(sink, p) == [["a@dest.org", "b@dest.org", "was@dest.org"]])
    # stored as HTTP stores them: the refused ones held back in state "suppressed", never sent
    states = {r.address: r.state for m in smtp_messages(gw) for r in m.recipients}
    assert sorted(a for a, s in states.items() if s == "suppressed") == ["Gone@Dest.ORG", "left@dest.org"]
    assert sorted(a for a, s in states.items() if s != "suppressed") == ["a@dest.org", "b@dest.org", "was@dest.org"]

    # a message whose only recipient is suppressed is never stored
    replies, data = await send(gw, p, ["left@dest.org"])
    assert replies == [SUPPRESSED] and data is None
    assert len(smtp_messages(gw)) == 1


async def test_a_hard_bounce_suppresses_the_address_for_the_next_submission(gateway_factory, sink_factory):
    gw, sink, p = await policy_gateway(gateway_factory, sink_factory, ["suppression"],
                                       suppression={"cache_ttl": 0})
    acc = gw.store.directory.get_account("acme")
    supp = Suppressions(gw.store.sessions, gw.store.reads)
    # an entry that has lapsed does not suppress; the bounce renews it (one entry, whatever the case)
    supp.add(acc.id, [NewSuppression("gone@dest.org", "manual", expires_at=utcnow() - dt.timedelta(days=1))])
    sink.rcpt_replies["Gone@Dest.org"] = "550 5.1.1 No such user"
    replies, data = await send(gw, p, ["Gone@Dest.org", "here@dest.org"])
    assert replies == [OK_RCPT, OK_RCPT] and data[0] == 250
    await wait_for(lambda: supp.lookup(acc.id, "gone@dest.org") is not None)
    [entry] = supp.list(acc.id, include_expired=True)
    assert (entry.address, entry.reason, entry.expires_at) == ("gone@dest.org", "hard_bounce", None)
    replies, _ = await send(gw, p, ["gone@dest.org", "here@dest.org"])
    assert replies == [SUPPRESSED, OK_RCPT]


# -- limits ------------------------------------------------------------------------------------------------
async def test_101_recipients_100_accepted_the_rest_452(gateway_factory, sink_factory):
    # the envelope limit is the policy's here (smtp.max_recipients is set higher)
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_recipients": 1000}, policies={"enabled": ["limits"]})
    p = provision(gw, sink.port)
    rcpts = [f"r{i:03}@dest.org" for i in range(102)]
    replies, data = await send(gw, p, rcpts)
    assert replies[:100] == [OK_RCPT] * 100
    assert replies[100:] == [TOO_MANY_RCPTS, TOO_MANY_RCPTS]
    assert data[0] == 250
    await wait_for(lambda: delivered(sink, p) == [sorted(rcpts[:100])])
    assert stored_rcpts(gw) == [sorted(rcpts[:100])]


async def test_header_recipient_counts_and_subject_length(gateway_factory, sink_factory):
    gw, sink, p = await policy_gateway(gateway_factory, sink_factory, ["limits"])
    to_101 = fold([f"t{i}@dest.org" for i in range(101)])
    cc_51 = fold([f"c{i}@dest.org" for i in range(51)]).encode()
    bcc_51 = fold([f"b{i}@dest.org" for i in range(51)]).encode()
    long_subject = fold(words(999), sep=" ")
    cases = [
        (message(from_=p.alias, to=to_101), (REFUSED, "5.5.3 Too many recipients")),
        (message(from_=p.alias, extra=b"Cc: " + cc_51 + b"\r\n"), (REFUSED, "5.5.3 Too many recipients")),
        (message(from_=p.alias, extra=b"Bcc: " + bcc_51 + b"\r\n"), (REFUSED, "5.5.3 Too many recipients")),
        (message(from_=p.alias, subject=long_subject), (REFUSED, "5.6.0 Subject too long")),
    ]
    for data, expected in cases:
        _, got = await send(gw, p, ["r@dest.org"], data)
        assert got == expected
    assert smtp_messages(gw) == []
    # exactly at the limits it goes
    to_100 = fold([f"t{i}@dest.org" for i in range(100)])
    cc_50 = fold([f"c{i}@dest.org" for i in range(50)]).encode()
    _, got = await send(gw, p, ["r@dest.org"], message(from_=p.alias, to=to_100, subject=fold(words(998), sep=" "),
                                                       extra=b"Cc: " + cc_50 + b"\r\n"))
    assert got[0] == 250, got
    await wait_for(lambda: delivered(sink, p) == [["r@dest.org"]])


async def test_message_size_is_advertised_and_enforced_with_552(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"max_message_size": 4000}, policies={"enabled": ["limits"]})
    p = provision(gw, sink.port)
    smtp = await session(gw, p.key)
    assert smtp.supports_extension("size") and smtp.esmtp_extensions["size"] == "4000"
    assert await reply(smtp.mail(p.alias, options=["SIZE=5000"])) == \
        (TOO_BIG, "5.3.4 Error: message size exceeds fixed maximum message size")
    assert await reply(smtp.mail(p.alias)) == OK_MAIL
    assert await reply(smtp.rcpt("r@dest.org")) == OK_RCPT
    assert await reply(smtp.data(message(from_=p.alias, body=(b"z" * 70 + b"\r\n") * 70))) == \
        (TOO_BIG, "5.3.4 Message too big for system")
    smtp.close()
    assert smtp_messages(gw) == []

    # the HTTP front door has no SIZE: the policy checks the size itself (552 5.3.4 / HTTP 400)
    policy = dict(gw.policies.policies)["limits"]
    ctx = SimpleNamespace(listener="api", recipients=[], extra={SIZE: 4001})
    verdict = await policy.on_data(ctx, {})
    assert (verdict.code, verdict.enhanced, verdict.http_status) == (552, "5.3.4", 400)
    ctx.extra[SIZE] = 4000
    assert await policy.on_data(ctx, _Headers()) is None
    # the API's envelope may hold to + cc + bcc (100 + 50 + 50)
    assert policy.envelope_limit("api") == 200 and policy.envelope_limit("submission") == 100


class _Headers(dict):
    def get_all(self, name, default=None):
        return default
