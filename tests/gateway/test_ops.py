"""Operations, in process: /metrics, /healthz, /readyz, JSON log lines, reload, graceful session close.

The real-process side (notify socket, SIGHUP, SIGTERM) is in test_ops_process.py; the Dockerfile and
the systemd unit in test_ops_docker.py and test_ops_systemd.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import ssl

import aiosmtplib
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.ops import metrics
from relay.api.app import create_app
from relay.api.deps import from_gateway
from relay.ops.config import load_settings, parse_hostport
from relay.ops.logs import JsonFormatter, MESSAGE_FIELDS
from relay.cli.progress import progress, shown
from relay.gateway import Gateway
from relay.store.stats import queue_stats
from tests.conftest import free_port, port_of, provision, wait_for
from tests.gateway.test_submission import QUEUED, client, message, reply, transaction
from tests.support.replies import AUTH_INVALID, OK

SHUTTING_DOWN = "421 4.3.2"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(data: dict, name: str, **labels: str) -> float:
    return data.get((name, frozenset(labels.items())), 0.0)


def api_url(gw: Gateway, path: str) -> str:
    host, port = parse_hostport(gw.settings.api.listen)
    return f"http://{host}:{port}{path}"


async def scrape(gw: Gateway) -> dict:
    async with httpx.AsyncClient() as c:
        r = await c.get(api_url(gw, "/metrics"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def scrape_until(gw: Gateway, ok, timeout: float = 10.0) -> dict:
    """Scrape until *ok(samples)*: outcome counters move just after the store commit that
    the test can see."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        data = await scrape(gw)
        if ok(data) or loop.time() > end:
            return data
        await asyncio.sleep(0.05)


def pending(gw: Gateway) -> int:
    return sum(queue_stats(gw.store).depth.values())


async def settled(gw: Gateway) -> None:
    """The alias verification mail (queued by provisioning) is out of the way."""
    await wait_for(lambda: pending(gw) == 0)


# -- metrics ---------------------------------------------------------------------------------------
async def test_metrics_parse_and_count_what_was_sent(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    await settled(gw)
    before = await scrape(gw)

    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    for i in range(3):
        stage, code, text = await transaction(smtp, p.alias, [f"r{i}@dest.org"], message(subject=f"m{i}"))
        assert (stage, code) == ("DATA", 250) and QUEUED.match(text)
    assert await transaction(smtp, "nobody@example.com", ["r@dest.org"], message()) == \
        ("MAIL", 553, "5.7.1 Sender address not allowed for this login")
    await smtp.quit()
    bad = await client(gw, "smtps")
    assert (await reply(bad.auth_plain("apikey", "rk_00000000_wrong")))[0] == AUTH_INVALID  # one attempt
    bad.close()
    await wait_for(lambda: len([m for m in sink.received if b"Subject: m" in m.data]) == 3)
    await wait_for(lambda: pending(gw) == 0)
    delivered = dict(pool="default", upstream="sink", outcome="delivered")
    after = await scrape_until(gw, lambda d: value(d, "relay_recipients_total", **delivered)
                               - value(before, "relay_recipients_total", **delivered) >= 3)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("relay_smtp_sessions_total", listener="submission") == 1
    assert delta("relay_smtp_sessions_total", listener="smtps") == 1
    assert delta("relay_smtp_auth_failures_total", listener="smtps") == 1
    assert delta("relay_smtp_auth_failures_total", listener="submission") == 0
    assert delta("relay_messages_accepted_total", listener="submission", pool="default") == 3
    assert delta("relay_messages_rejected_total", listener="submission", phase="mail", code="553",
                 enhanced="5.7.1") == 1
    assert delta("relay_recipients_total", pool="default", upstream="sink", outcome="delivered") == 3
    assert delta("relay_recipients_total", pool="default", upstream="sink", outcome="bounced") == 0
    assert delta("relay_upstream_transaction_seconds_count", pool="default", upstream="sink", result="ok") == 3
    assert delta("relay_dkim_sign_seconds_count") == 3
    assert delta("relay_store_commit_seconds_count") >= 2  # group commits: enqueues, outcomes (no markers on SQLite)
    assert delta("relay_store_commit_items_total") >= 6
    # store-wide gauges, built at scrape time
    for state in ("queued", "deferred", "delivering"):
        assert value(after, "relay_queue_recipients", state=state) == 0
    assert value(after, "relay_queue_oldest_age_seconds") == 0
    assert value(after, "relay_upstream_up", pool="default", upstream="sink") == 1
    assert ("relay_smtp_sessions_open", frozenset({("listener", "submission")})) in after
    assert ("process_cpu_seconds_total", frozenset()) in after


async def test_queue_gauges_show_deferred_work_and_its_age(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    await settled(gw)
    sink.data_replies = ["451 4.3.0 try later"] * 50
    smtp = await client(gw)
    await smtp.login("apikey", p.key)
    assert (await transaction(smtp, p.alias, ["a@dest.org", "b@dest.org"], message()))[1] == 250
    await smtp.quit()
    await wait_for(lambda: queue_stats(gw.store).depth.get("deferred") == 2)
    data = await scrape_until(gw, lambda d: value(d, "relay_recipients_total", pool="default", upstream="sink",
                                                   outcome="deferred") >= 2)
    assert value(data, "relay_queue_recipients", state="deferred") == 2
    assert value(data, "relay_queue_oldest_age_seconds") > 0
    assert value(data, "relay_recipients_total", pool="default", upstream="sink", outcome="deferred") >= 2


async def test_metrics_need_an_operator_key_away_from_loopback(gateway_factory):
    gw = await gateway_factory()
    provision(gw, free_port())
    operator_key, _ = gw.admin.create_key("acme", ["operator"])
    admin_key, _ = gw.admin.create_key("acme", ["admin"])  # an account's administrator, not the gateway's
    send_key, _ = gw.admin.create_key("acme", ["send"])
    app = create_app(gw)
    remote = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)),
                               base_url="http://relay")
    async with remote:
        r = await remote.get("/metrics")
        assert r.status_code == 401 and r.json() == {"success": False,
                                                     "error": "An API key with the operator scope is required"}
        assert (await remote.get("/metrics", headers={"Authorization": f"Bearer {send_key}"})).status_code == 401
        assert (await remote.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"})).status_code == 401
        assert (await remote.get("/metrics", headers={"Authorization": "Bearer rk_0000_nope"})).status_code == 401
        r = await remote.get("/metrics", headers={"Authorization": f"Bearer {operator_key}"})
        assert r.status_code == 200 and "relay_queue_recipients" in r.text
        assert (await remote.get("/healthz")).status_code == 200  # liveness stays open
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://relay")
        async with local:
            assert (await local.get("/metrics")).status_code == 200, peer


# -- health -------------------------------------------------------------------------------------
async def test_healthz_and_readyz_with_detail(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    provision(gw, sink.port)
    await settled(gw)  # the verification mail's delivery would close the breaker opened below
    async with httpx.AsyncClient() as c:
        assert (await c.get(api_url(gw, "/healthz"))).json() == {"status": "ok", "worker": 0}
        r = await c.get(api_url(gw, "/readyz"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready"
        assert body["checks"]["listeners"] == {"ok": True, "detail": {"submission": True, "smtps": True}}
        assert body["checks"]["store"] == {"ok": True}
        assert body["checks"]["pools"]["detail"] == {"default": {"ok": True, "healthy": ["sink"], "down": []}}

        up = gw.router.ip_pools["default"][0]
        for _ in range(gw.router.threshold):
            gw.router.failure(up)
        r = await c.get(api_url(gw, "/readyz"))
        assert r.status_code == 503
        assert r.json()["checks"]["pools"] == {"ok": False, "detail": {"default": {"ok": False, "healthy": [],
                                                                                 "down": ["sink"]}}}
        gw.router.success(up)
        # a verified alias on a pool without any upstream: not ready either
        gw.admin.add_alias("news@example.com", account="acme", ip_pool="marketing")
        gw.admin.verify_alias(email="news@example.com")
        r = await c.get(api_url(gw, "/readyz"))
        assert r.status_code == 503 and r.json()["checks"]["pools"]["detail"]["marketing"]["ok"] is False
        assert (await c.get(api_url(gw, "/healthz"))).status_code == 200


# -- logs ---------------------------------------------------------------------------------------
@pytest.fixture
def json_lines():
    """Every log record of the test, formatted by the JSON formatter at DEBUG."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: out.getvalue().splitlines()
    root.removeHandler(handler)
    root.setLevel(old)


async def test_json_log_lines_parse_and_carry_the_message_fields(gateway_factory, sink_factory, json_lines):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    await settled(gw)
    smtp = await client(gw)
    assert (await reply(smtp.login(p.key, p.key)))[0] == AUTH_INVALID  # the key pasted as user name too
    await smtp.login("apikey", p.key)
    stage, code, text = await transaction(smtp, p.alias, ["r@dest.org"], message())
    assert code == OK
    queue_id = QUEUED.match(text).group(1)
    await transaction(smtp, "nobody@example.com", ["r@dest.org"], message())
    await smtp.quit()
    await wait_for(lambda: any(queue_id in line and "recipient delivered" in line for line in json_lines()))

    lines = json_lines()
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for rec in records:
        assert {"time", "level", "logger", "message"} <= set(rec)
    about = [r for r in records if r.get("queue_id") == queue_id]
    queued = next(r for r in about if r["message"] == "message queued")
    assert (queued["account"], queued["alias"], queued["pool"]) == ("acme", p.alias, "default")
    delivered = next(r for r in about if r["message"] == "recipient delivered")
    assert (delivered["upstream"], delivered["pool"]) == ("sink", "default")
    assert delivered["reply"].startswith("2.0.0") or "OK" in delivered["reply"]
    for r in about:
        assert set(MESSAGE_FIELDS) <= set(r), r
    refused = next(r for r in records if r["message"] == "mail refused")
    assert refused["reply"] == "553 5.7.1 Sender address not allowed for this login"
    assert refused["account"] == "acme"
    secret = p.key.split("_", 2)[2]
    master = gw.settings.master_key_path.read_text().strip()
    for line in lines:
        assert p.key not in line and secret not in line and master not in line


# -- reload -------------------------------------------------------------------------------------
def write_config(path, data_dir, submission: int, smtps: int, api: int, extra: str = "") -> None:
    path.write_text(f"""
data_dir = "{data_dir}"
hostname = "relay.test"
[smtp]
submission = "127.0.0.1:{submission}"
smtps = "127.0.0.1:{smtps}"
auth_max_failures = 1000
{extra}
[api]
listen = "127.0.0.1:{api}"
[delivery]
verify_certificates = false
""")


async def test_reload_applies_safe_keys_and_names_the_others(tmp_path, caplog):
    cfg = tmp_path / "relay.toml"
    ports = free_port(), free_port(), free_port()
    write_config(cfg, tmp_path / "data", *ports)
    gw = Gateway(load_settings(cfg, env={}), env={})
    await gw.start()
    root_level = logging.getLogger().level
    try:
        old_context = gw.tls_context
        write_config(cfg, tmp_path / "data", free_port(), ports[1], ports[2],
                     extra="max_message_size = 1000\nmax_recipients = 7\n"
                           "[database]\nurl = \"postgresql://relay:pg-s3cret@db.invalid/relay\"\n"
                           "[log]\nlevel = \"DEBUG\"")
        caplog.set_level(logging.INFO)
        report = gw.reload()
        assert report.ok
        assert report.applied == ["log.level", "smtp.max_message_size", "smtp.max_recipients"]
        assert report.restart_required == ["database.url", "smtp.submission"]
        assert gw.settings.smtp.max_message_size == 1000 and gw.pipeline.max_recipients == 7
        assert gw.settings.smtp.submission == f"127.0.0.1:{ports[0]}"  # kept until a restart
        assert gw.tls_context is old_context  # the listeners' context: its certificate is switched per handshake
        assert logging.getLogger().level == logging.DEBUG
        smtp = await client(gw)
        assert "size" in smtp.esmtp_extensions and smtp.esmtp_extensions["size"] == "1000"  # new session, new limit
        await smtp.quit()
        texts = [r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records]
        assert any("reloaded" in t and "smtp.max_message_size" in t for t in texts)
        warning = next(r for r in caplog.records if r.levelno == logging.WARNING and "restart" in r.getMessage())
        assert "database.url" in warning.getMessage() and "smtp.submission" in warning.getMessage()
        assert not any("pg-s3cret" in t for t in texts)

        cfg.write_text("[smtp\nbroken")  # a file that no longer loads changes nothing
        report = gw.reload()
        assert not report.ok and "invalid TOML" in report.error and report.applied == []
        assert gw.settings.smtp.max_message_size == 1000
    finally:
        logging.getLogger().setLevel(root_level)
        await gw.stop(grace=1)


# -- graceful stop -------------------------------------------------------------------------------
class Raw:
    """A raw SMTP session over implicit TLS (465), to stop anywhere mid-transaction."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, key: str | None = None) -> "Raw":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        raw = cls(*await asyncio.open_connection("127.0.0.1", port, ssl=ctx))
        assert (await raw.reply()).startswith("220")
        assert (await raw.cmd("EHLO client.test")).startswith("250")
        if key:
            token = base64.b64encode(f"\0apikey\0{key}".encode()).decode()
            assert (await raw.cmd(f"AUTH PLAIN {token}")).startswith("235")
        return raw

    async def reply(self, timeout: float = 10.0) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), timeout)).decode()
            if not line:
                return "".join(lines) or "(closed)"
            lines.append(line)
            if line[3:4] != "-":
                return "".join(lines).strip()

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def start_data(self, sender: str, rcpt: str) -> None:
        assert (await self.cmd(f"MAIL FROM:<{sender}>")).startswith("250")
        assert (await self.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
        assert (await self.cmd("DATA")).startswith("354")

    def close(self) -> None:
        self.writer.close()


async def test_stop_closes_idle_sessions_and_421s_a_transaction_past_the_timeout(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    port = port_of(gw, "smtps")
    idle = await Raw.open(port, p.key)
    stuck = await Raw.open(port, p.key)
    await stuck.start_data(p.alias, "r@dest.org")
    stuck.writer.write(b"From: App <app@example.com>\r\nTo: r@dest.org\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.create_task(gw.stop(grace=2.0))
    assert (await idle.reply(timeout=3)).startswith(SHUTTING_DOWN)
    assert loop.time() - started < 1.0  # at once, not after the timeout
    assert (await stuck.reply(timeout=5)).startswith(SHUTTING_DOWN)
    assert loop.time() - started >= 1.9  # the open transaction had its time
    await asyncio.wait_for(stop, 10)
    assert gw.store.queue.list_messages() == [] or all(m.source != "smtp" for m in gw.store.queue.list_messages())
    idle.close()
    stuck.close()


def test_progress_only_on_a_terminal_without_json():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert shown(False, Tty()) and not shown(True, Tty()) and not shown(False, io.StringIO())
    assert list(progress(range(5), label="x", as_json=True)) == [0, 1, 2, 3, 4]


def test_metrics_helpers_cache_their_label_children():
    metrics.session_opened("test-listener")
    metrics.session_opened("test-listener")
    key = (metrics.SESSIONS, "test-listener")
    assert key in metrics._children
    assert metrics._children[key]._value.get() >= 2


def test_queue_retry_and_delete_many_stay_quiet_under_json(tmp_path):
    import datetime as dt

    from click.testing import CliRunner

    from relay.cli.main import main as relay_cli
    from relay.store import Store
    from relay.store.queue import NewMessage

    env = {"RELAY_DATA_DIR": str(tmp_path / "data"), "RELAY_HOSTNAME": "relay.test"}
    settings = load_settings(None, env=env)
    store = Store(settings.database_url)
    store.migrate()
    now = dt.datetime.now(dt.timezone.utc)
    ids = [f"msg_{i:016x}" for i in range(5)]
    store.queue.enqueue([NewMessage(id=i, ip_pool="default", mail_from="a@example.com", body=b"x", recipients=["r@x.org"],
                                    created_at=now, expires_at=now + dt.timedelta(days=1)) for i in ids])
    store.close()
    runner = CliRunner()
    res = runner.invoke(relay_cli, ["queue", "retry", *ids[:3], "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"success": True, "recipients": 0, "messages": 3}  # none was deferred
    res = runner.invoke(relay_cli, ["queue", "delete", *ids[:2], "--json"], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout) == {"success": True, "deleted": ids[:2], "count": 2}
    res = runner.invoke(relay_cli, ["queue", "delete", "--state", "queued", "--json"], env=env)
    data = json.loads(res.stdout)  # nothing but the JSON: no progress bar when not on a terminal
    assert data["success"] and data["count"] == 3 and sorted(data["deleted"]) == ids[2:]
    res = runner.invoke(relay_cli, ["queue", "delete", ids[0], "--json"], env=env)
    assert res.exit_code == 1  # already gone


async def test_readyz_from_elsewhere_says_only_ready_or_not(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    await settled(gw)
    app = create_app(from_gateway(gw))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as c:
        r = await c.get("/readyz")
        assert (r.status_code, r.json()) == (200, {"status": "ready"})  # no upstream names, no listeners
        r = await c.get("/readyz", headers={"Authorization": f"Bearer {p.key}"})  # a send key: still no detail
        assert r.json() == {"status": "ready"}
        assert (await c.get("/metrics")).status_code == 401


async def test_a_graceful_stop_hands_waiting_mail_back_at_once(gateway_factory):
    """SIGTERM's first step: no new attempt; what waits in this node's active queue loses its lease
    at once (another node's next poll takes it), while the attempt in flight keeps its lease and
    finishes; nothing is marked delivered that the upstream did not answer."""
    import sqlalchemy as sa

    from relay.store import models as m
    from tests.support.crash import SlowSink

    sink = SlowSink(free_port())
    sink.delay = 1.0  # the attempt in flight waits that long for its reply after the dot
    await sink.start()
    try:
        gw = await gateway_factory(delivery={"concurrency": 1})
        p = provision(gw, sink.port)
        await settled(gw)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True,
                                   validate_certs=False) as smtp:
            await smtp.login("apikey", p.key)
            for i in range(6):
                await smtp.sendmail(p.alias, [f"r{i}@dest.org"], message(from_=p.alias, to=f"r{i}@dest.org"))
        await wait_for(lambda: any(r.mail_from == p.alias for r in sink.received), timeout=10)

        def leases() -> dict[str, tuple[str, str | None]]:
            with gw.store.sessions() as s:
                rows = s.execute(sa.select(m.Recipient.address, m.Recipient.state, m.Recipient.lease_owner)
                                 .where(m.Recipient.address.like("r%@dest.org"))).all()
            return {a: (st, o) for a, st, o in rows}

        stop = asyncio.create_task(gw.stop(grace=5.0))
        await wait_for(lambda: sum(1 for _, o in leases().values() if o is None) >= 5, timeout=0.9)  # at once
        assert not stop.done()  # the attempt in flight keeps its lease until its reply is in
        await asyncio.wait_for(stop, 10)
        got = {r.rcpt_tos[0] for r in sink.received if r.mail_from == p.alias}
        final = leases()
        assert {a for a, (st, _) in final.items() if st == "delivered"} <= got  # only what was answered
        assert all(st in ("queued", "deferred", "delivered") for st, _ in final.values())
        assert all(o is None for _, o in final.values())  # nothing left leased to the stopped node
        assert len([a for a, (st, _) in final.items() if st != "delivered"]) >= 4  # for another node
    finally:
        await sink.stop()
