"""No secret leaks: after a full run (provisioning with an authenticated upstream, submissions on both
listeners, a failed login, delivery, the CLI's list commands), no API key, upstream password, DKIM
private key or master key appears in any log record (captured at DEBUG), in any CLI output, in the
database file in clear, or in the repr() of the objects an operator may print."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP, AuthResult, LoginPassword
from click.testing import CliRunner

from relay.cli.main import main as relay_cli
from relay.ops.config import settings_from_dict
from relay.ops.logs import JsonFormatter, TextFormatter
from tests.conftest import Sink, free_port, port_of, provision, wait_for
from tests.gateway.test_cli import Cli

UPSTREAM_USER = "relay-upstream"
MSG = b"From: App <app@example.com>\r\nTo: r@dest.org\r\nSubject: hi\r\n\r\nhello\r\n"


async def start_auth_sink(password: str) -> tuple[Sink, list[bool]]:
    """An upstream that requires AUTH (over plain TCP, tests only) with UPSTREAM_USER/password."""
    sink = Sink(free_port())
    logins: list[bool] = []

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == UPSTREAM_USER.encode()
              and auth_data.password == password.encode())
        logins.append(ok)
        return AuthResult(success=ok, handled=False, auth_data="upstream-login" if ok else None)

    loop = asyncio.get_running_loop()
    sink.server = await loop.create_server(
        lambda: AioSMTP(sink, hostname="sink.test", auth_require_tls=False, authenticator=authenticator, loop=loop),
        "127.0.0.1", sink.port)
    return sink, logins


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def record_texts(record: logging.LogRecord) -> list[str]:
    """Everything a log line can carry: the message, every extra field, the traceback, in both formats."""
    return [record.getMessage(), repr(record.__dict__), TextFormatter().format(record), JsonFormatter().format(record)]


def leaks(texts: list[str], secrets_: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, text[:300]) for text in texts for name, value in secrets_.items() if value in text]


async def test_no_secret_in_logs_cli_output_database_or_reprs(gateway_factory, caplog):
    caplog.set_level(logging.DEBUG)
    upstream_pw = "upstream-pw-" + secrets.token_urlsafe(12)
    sink, logins = await start_auth_sink(upstream_pw)
    try:
        gw = await gateway_factory()
        gw.admin.add_upstream(name="sink", ip_pool="default", host="127.0.0.1", port=sink.port, encryption="none",
                              username=UPSTREAM_USER, password=upstream_pw)
        p = provision(gw, sink.port)
        key2, _ = gw.admin.create_key("acme", ["send"], name="second")

        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "submission"), start_tls=True,
                               validate_certs=False)
        await smtp.connect()
        await smtp.ehlo()
        wrong = p.key[:-6] + ("A" * 6 if not p.key.endswith("A" * 6) else "B" * 6)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.auth_plain("apikey", wrong)
        await smtp.auth_plain("apikey", p.key)
        await smtp.sendmail("app@example.com", ["r@dest.org"], MSG)
        await smtp.quit()
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.auth_login("acme", key2)
        _, reply = await smtp.sendmail("app@example.com", ["r2@dest.org"], MSG)
        await smtp.quit()
        qid = reply.rsplit(" ", 1)[1]
        await wait_for(lambda: len([r for r in sink.received if r.mail_from == "app@example.com"]) == 2)
        await wait_for(lambda: gw.store.queue.show(qid).state == "delivered")
        assert logins and all(logins)  # the upstream password really was used

        # the CLI's list commands, in-process (their log records land in caplog too) and for real
        data_dir = str(gw.settings.data_dir)
        cli = Cli(gw.settings.data_dir)
        runner = CliRunner(env={**{k: None for k in os.environ if k.startswith("RELAY_")},
                                "RELAY_DATA_DIR": data_dir, "RELAY_HOSTNAME": "relay.test"})
        outputs = []
        for args in (["account", "list"], ["key", "list"], ["domain", "list"], ["domain", "records", "example.com"],
                     ["pool", "list"], ["alias", "list"], ["queue", "list"], ["queue", "show", qid]):
            for fmt in (["--json"], []):
                result = runner.invoke(relay_cli, args + fmt, catch_exceptions=False)
                assert result.exit_code == 0, (args, result.output)
                outputs += [result.stdout, result.stderr]
        pools = runner.invoke(relay_cli, ["pool", "list", "--json"]).stdout
        assert UPSTREAM_USER in pools and "sink" in pools
        real_pools, real_keys = cli.collect(cli.start("pool", "list", "--json"), cli.start("key", "list", "--json"))
        assert real_pools.code == 0 and UPSTREAM_USER in real_pools.out  # the real console script, too
        assert real_keys.code == 0 and '"second"' in real_keys.out
        outputs += [real_pools.out, real_pools.err, real_keys.out, real_keys.err]

        # every secret there is
        dkim_lines = {}
        for dom in gw.store.directory.list_domains():
            for k in dom.keys:
                pem = gw.master_key.decrypt_str(k.private_key_enc, aad=dom.name)
                body = [line for line in pem.splitlines() if line and "PRIVATE KEY" not in line]
                assert body
                dkim_lines.update({f"dkim {k.selector} line {i}": line for i, line in enumerate(body)})
        master = (gw.settings.master_key_path).read_text().strip()
        plain = {"api key 1": p.key, "api key 2": key2, "api key 1 secret": p.key.split("_", 2)[2],
                 "api key 2 secret": key2.split("_", 2)[2], "upstream password": upstream_pw,
                 "master key": master, **dkim_lines}
        encoded = {"AUTH PLAIN key 1": b64(f"\0apikey\0{p.key}"), "AUTH LOGIN key 2": b64(key2),
                   "upstream AUTH PLAIN": b64(f"\0{UPSTREAM_USER}\0{upstream_pw}"),
                   "upstream AUTH LOGIN": b64(upstream_pw)}
        everything = {**plain, **encoded}

        await gw.stop(grace=1)  # its shutdown logs are checked too
    finally:
        await sink.stop()

    records = caplog.records
    assert len(records) > 50 and any(r.name.startswith("relay") for r in records)
    # aiosmtpd's per-command chatter was captured too, AUTH lines included (masked by aiosmtpd)
    assert any("AUTH PLAIN ********" in r.getMessage() for r in records if r.name == "mail.log")
    assert leaks([t for r in records for t in record_texts(r)], everything) == []
    assert leaks(outputs, everything) == []

    db = b"".join(f.read_bytes() for f in sorted(gw.settings.data_dir.glob("relay.db*")))
    assert [name for name, value in plain.items() if value.encode() in db] == []

    dsn_settings = settings_from_dict({"data_dir": data_dir, "database": {"url": "postgresql://relay:db-pw-Qx9@db/relay"}})
    objects = [gw.settings, gw.store, gw.admin, gw.master_key, gw.pipeline, gw.pipeline.signers, gw.router,
               gw.store.directory.list_api_keys(), gw.store.directory.list_domains(),
               gw.store.directory.list_upstreams(), gw.admin.dns_records(gw.store.directory.get_domain("example.com")),
               [u.cfg for u in gw._upstreams.values()], list(gw._upstreams.values())]
    reprs = [repr(o) for o in objects] + [str(o) for o in objects]
    assert leaks(reprs, everything) == []
    assert "db-pw-Qx9" not in repr(dsn_settings) + str(dsn_settings) + repr(dsn_settings.safe_dump())


async def test_api_key_sent_as_username_is_not_logged(gateway_factory, sink_factory, caplog):
    caplog.set_level(logging.DEBUG)
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False)
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
        await smtp.auth_plain(p.key, "x")  # fields swapped by the user
    await smtp.quit()
    assert failed.value.code == 535
    assert leaks([t for r in caplog.records for t in record_texts(r)], {"api key": p.key}) == []
