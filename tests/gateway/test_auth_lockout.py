"""An attacker's AUTH failures lock out the attacker's address, never an account's users elsewhere."""

from __future__ import annotations

import aiosmtplib

from relay.gateway import Gateway
from relay.throttle import AuthThrottle
from tests.conftest import port_of, provision
from tests.support.replies import AUTH_REQUIRED, OK

AUTH_OK, AUTH_INVALID, LOCKED_OUT = 235, 535, 421


def wrong(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


async def login(gw: Gateway, key: str, source: str) -> int:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False,
                           source_address=(source, 0), timeout=10)
    await smtp.connect()
    try:
        await smtp.ehlo()
        return (await smtp.auth_plain("apikey", key)).code
    except aiosmtplib.SMTPAuthenticationError as exc:
        return exc.code
    except aiosmtplib.SMTPServerDisconnected:
        return LOCKED_OUT
    finally:
        smtp.close()


async def test_failures_from_one_address_never_lock_out_the_shared_username_elsewhere(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"auth_max_failures": 3, "auth_lockout": 60})
    p = provision(gw, sink.port)
    for _ in range(3):  # the attacker, at 127.0.0.2, with the documented username and wrong keys
        assert await login(gw, wrong(p.key), "127.0.0.2") == AUTH_INVALID
    assert await login(gw, p.key, "127.0.0.2") == LOCKED_OUT  # the attacker's address is locked, right key or not
    assert await login(gw, p.key, "127.0.0.1") == AUTH_OK  # the account's own client elsewhere is not


def test_the_throttle_counts_per_address_and_per_address_and_username():
    now = [0.0]
    t = AuthThrottle(2, 60, clock=lambda: now[0])
    assert not t.failure("10.0.0.1", "apikey") and t.failure("10.0.0.1", "apikey")
    assert t.locked("10.0.0.1") and t.locked("10.0.0.1", "acme")
    assert not t.locked("10.0.0.2", "apikey")  # the username alone locks nothing
    now[0] = 61.0
    assert not t.locked("10.0.0.1", "apikey")


async def test_a_revoked_key_stops_its_open_sessions_at_the_next_mail(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory()
    p = provision(gw, sink.port)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(gw, "smtps"), use_tls=True, validate_certs=False,
                           timeout=10)
    await smtp.connect()
    await smtp.login("apikey", p.key)
    assert (await smtp.mail(p.alias)).code == OK
    await smtp.rset()
    key_id = gw.store.directory.list_api_keys("acme")[0].id
    gw.admin.revoke_key(key_id)  # what the CLI does (another process: seen within the 5 s key cache)
    gw.pipeline.invalidate()  # what the API does after it revoked a key in this process
    try:
        await smtp.mail(p.alias)
        raise AssertionError("MAIL accepted with a revoked key")
    except aiosmtplib.SMTPSenderRefused as exc:
        assert (exc.code, exc.message) == (AUTH_REQUIRED, "5.7.0 Authentication required (the key was revoked)")
    smtp.close()
