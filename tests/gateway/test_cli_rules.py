"""One rule, one place: each rule of relay.services run through both front doors, the ``relay``
CLI (in-process, click's CliRunner, on the running gateway's data dir) and the HTTP API, with the
same outcome: the same refusal text, exit 1 for the CLI where the API answers 403/404/409.
"""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from relay.cli.main import main as relay_cli
from relay.delivery.upstream import Upstream
from relay.services import upstreams as upstream_service
from relay.services.upstreams import upstream_config
from relay.vocab import NotFound
from tests.support.api import Api, send_body, start_api
from tests.conftest import free_port

OK, FORBIDDEN, NOT_FOUND, CONFLICT = 200, 403, 404, 409
EXIT_OK, EXIT_REFUSED = 0, 1
ONLY_VERIFIED = "Cannot delete the only remaining verified alias"
QUEUED = "Alias is used by 1 queued recipient(s): wait for their delivery or remove them from the queue first"
DEPRECATED_POOL = "relay: `relay pool` is deprecated; use `relay upstream` (same commands and options)"


@pytest.fixture
async def api(gateway_factory, sink_factory):
    """A running gateway (SQLite in its data dir), an account with a verified alias, an admin key."""
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        yield a


async def relay(a: Api, *args: str) -> SimpleNamespace:
    """``relay ARGS`` on the gateway's data dir, in a thread (its commands may run their own event loop)."""
    env = {**{k: None for k in os.environ if k.startswith("RELAY_")},
           "RELAY_DATA_DIR": str(a.gw.settings.data_dir), "RELAY_HOSTNAME": a.gw.settings.hostname}
    result = await asyncio.to_thread(CliRunner(env=env).invoke, relay_cli, list(args), catch_exceptions=False)
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr,
                           json=lambda: json.loads(result.stdout))


# -- alias removal: Admin.remove_alias_checked --------------------------------------------------------------
async def test_the_only_verified_alias_stays_through_cli_and_api(api: Api):
    alias = api.gw.store.directory.find_alias(api.p.alias)
    r = await relay(api, "alias", "remove", api.p.alias)
    assert (r.code, r.out, r.err) == (EXIT_REFUSED, "", f"relay: {ONLY_VERIFIED}\n")
    r = await relay(api, "alias", "remove", api.p.alias, "--json")
    assert r.code == EXIT_REFUSED and r.json() == {"success": False, "error": ONLY_VERIFIED}

    resp = await api.client.delete(f"/api/v1/aliases/{alias.id}")
    assert (resp.status_code, resp.json()) == (FORBIDDEN, {"success": False, "error": ONLY_VERIFIED})
    assert api.gw.store.directory.find_alias(api.p.alias) is not None  # neither door removed it


async def test_an_alias_queued_mail_uses_stays_through_cli_and_api(api: Api):
    api.gw.admin.add_alias("tx@example.com", account=api.p.account, ip_pool="nowhere")
    alias = api.gw.admin.verify_alias(email="tx@example.com")
    api.gw.pipeline.invalidate()
    resp = await api.client.post("/api/v1/send", json=send_body(api.p, **{"from": {"email": "tx@example.com"}}))
    assert resp.status_code == 202, resp.text  # the IP pool has no upstream: the mail stays queued

    r = await relay(api, "alias", "remove", "tx@example.com")
    assert (r.code, r.out, r.err) == (EXIT_REFUSED, "", f"relay: {QUEUED}\n")
    resp = await api.client.delete(f"/api/v1/aliases/{alias.id}")
    assert (resp.status_code, resp.json()) == (CONFLICT, {"success": False, "error": QUEUED})
    assert api.gw.store.directory.find_alias("tx@example.com") is not None


async def test_an_unverified_alias_goes_through_cli_and_api(api: Api):
    api.gw.admin.add_alias("a@example.com", account=api.p.account)
    b, _ = api.gw.admin.add_alias("b@example.com", account=api.p.account)
    r = await relay(api, "alias", "remove", "A@example.com", "--json")
    assert r.code == EXIT_OK and r.json() == {"success": True, "removed": "A@example.com"}
    resp = await api.client.delete(f"/api/v1/aliases/{b.id}")
    assert (resp.status_code, resp.json()) == (OK, {"success": True})
    assert [a.email for a in api.gw.store.directory.list_aliases()] == [api.p.alias]


# -- API keys: Admin.revoke_key -----------------------------------------------------------------------------
async def test_key_revocation_is_scoped_to_the_account_for_an_account_key(api: Api):
    api.gw.admin.create_account("other")
    _, theirs = api.gw.admin.create_key("other", ["send"])
    resp = await api.client.delete(f"/api/v1/keys/{theirs.id}")
    assert (resp.status_code, resp.json()) == (NOT_FOUND, {"success": False, "error": "API key not found"})
    own_account = api.gw.store.directory.get_account(api.p.account).id
    try:
        api.gw.admin.revoke_key(theirs.id, account_id=own_account)
    except NotFound:
        pass
    else:
        raise AssertionError("revoke_key revoked another account's key")
    assert api.gw.store.directory.find_api_key(theirs.id).revoked is False
    # the operator's CLI may revoke any key
    r = await relay(api, "key", "remove", theirs.id, "--json")
    assert r.code == EXIT_OK and r.json() == {"success": True, "revoked": theirs.id}
    assert api.gw.store.directory.find_api_key(theirs.id).revoked is True


# -- upstreams: relay.services.upstreams ---------------------------------------------------------------------
def test_upstream_config_carries_every_field_of_the_record():
    rec = SimpleNamespace(id="smtp_1", name="ses", host="smtp.example.net", port=587, encryption="tls",
                          username="u", verify_tls=False, priority=5, weight=3, max_connections=4, account_id="acc_1")
    cfg = upstream_config(rec, "pw", default_max_connections=10)
    assert (cfg.id, cfg.name, cfg.host, cfg.port, cfg.encryption, cfg.username, cfg.password, cfg.verify_tls,
            cfg.priority, cfg.weight, cfg.max_connections, cfg.owner) == (
        "smtp_1", "ses", "smtp.example.net", 587, "tls", "u", "pw", False, 5, 3, 4, "acc_1")
    rec.max_connections = None  # unset: [delivery] max_connections
    assert upstream_config(rec, None, default_max_connections=10).max_connections == 10


async def test_upstream_add_and_test_through_cli_and_api_build_the_gateways_config(api: Api, monkeypatch):
    r = await relay(api, "upstream", "add", "second", "--ip-pool", "transactional", "--host", "127.0.0.1",
                    "--port", str(api.sink.port), "--encryption", "none", "--priority", "5", "--weight", "3",
                    "--max-connections", "4", "--json")
    assert r.code == EXIT_OK, r.err
    rec = api.gw.store.directory.get_upstream("second")
    assert (rec.priority, rec.weight, rec.max_connections) == (5, 3, 4)
    expected = upstream_config(rec, None, default_max_connections=api.gw.settings.delivery.max_connections)
    api.gw.load_upstreams()
    [delivering] = [u for u in api.gw.router.ip_pools["transactional"] if u.cfg.id == rec.id]
    assert delivering.cfg == expected  # what delivery uses is what the one function builds

    probed: list[Any] = []

    class Recording(Upstream):
        def __init__(self, cfg: Any, **kw: Any) -> None:
            probed.append(cfg)
            super().__init__(cfg, **kw)

    monkeypatch.setattr(upstream_service, "Upstream", Recording)
    r = await relay(api, "upstream", "test", "second", "--json")
    assert r.code == EXIT_OK and r.json()["success"] is True and r.json()["message"] == "SMTP connection successful"
    assert probed == [expected]  # priority, weight and max_connections included
    old = await relay(api, "pool", "test", "second")
    assert old.code == EXIT_OK and old.err.splitlines() == [DEPRECATED_POOL]
    assert old.out.startswith("SMTP connection successful (")
    resp = await api.client.post(f"/api/v1/smtp-pools/{rec.id}/test")
    assert resp.status_code == OK and {k: resp.json()[k] for k in ("success", "message")} == {
        "success": True, "message": "SMTP connection successful"}


async def test_an_unreachable_upstream_fails_its_test_through_cli_and_api(api: Api):
    closed = free_port()
    r = await relay(api, "upstream", "add", "gone", "--ip-pool", "default", "--host", "127.0.0.1",
                    "--port", str(closed), "--encryption", "none")
    assert r.code == EXIT_OK, r.err
    rec = api.gw.store.directory.get_upstream("gone")
    r = await relay(api, "upstream", "test", "gone", "--json")
    assert r.code == EXIT_REFUSED and r.json()["success"] is False
    r = await relay(api, "upstream", "test", "gone")
    assert r.code == EXIT_REFUSED and r.out == "" and r.err.startswith("SMTP connection failed (")
    resp = await api.client.post(f"/api/v1/smtp-pools/{rec.id}/test")
    assert resp.status_code == OK and resp.json()["success"] is False
    r = await relay(api, "upstream", "remove", "gone", "--json")
    assert r.code == EXIT_OK and r.json() == {"success": True, "removed": "gone"}
    assert (await api.client.get(f"/api/v1/smtp-pools/{rec.id}")).status_code == NOT_FOUND


# -- suppression with reason complaint: relay.services.suppressions.store_entries --------------------------
async def test_a_complaint_raises_the_complained_event_through_cli_and_api(api: Api):
    from tests.support.api import Receiver
    from tests.conftest import wait_for

    api.gw.webhooks.poll_interval = 0.05
    receiver = Receiver()
    await receiver.start()
    try:
        resp = await api.client.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["complained"]})
        assert resp.status_code == OK, resp.text
        r = await relay(api, "suppression", "add", "cli@dest.org", "--account", api.p.account, "--reason", "complaint")
        assert r.code == EXIT_OK, r.err
        resp = await api.client.post("/api/v1/suppressions", json={"email": "api@dest.org", "reason": "complaint"})
        assert resp.status_code == OK, resp.text
        await wait_for(lambda: len(receiver.received) == 2)
        got = sorted((h.json["type"], h.json["data"]["recipient"]) for h in receiver.received)
        assert got == [("complained", "api@dest.org"), ("complained", "cli@dest.org")]
    finally:
        await receiver.stop()


# -- the queue: relay.services.queue_admin.QueueAdmin ----------------------------------------------------------
async def test_retry_and_delete_through_cli_and_api(api: Api):
    api.gw.scheduler.retry_base = api.gw.scheduler.retry_max = 3600.0
    api.sink.rcpt_replies["later@dest.org"] = "451 4.2.0 Try again later"
    mids = [(await api.client.post("/api/v1/send", json=send_body(api.p, to=[{"email": "later@dest.org"}])))
            .json()["message_id"] for _ in range(2)]
    for _ in range(200):
        if all(api.gw.store.queue.show(m).recipients[0].state == "deferred" for m in mids):
            break
        await asyncio.sleep(0.05)
    r = await relay(api, "queue", "retry", mids[0], "--json")
    assert (r.code, r.json()) == (EXIT_OK, {"success": True, "recipients": 1})
    resp = await api.client.post(f"/api/v1/messages/{mids[1]}/retry")
    assert (resp.status_code, resp.json()) == (OK, {"success": True, "recipients": 1})
    r = await relay(api, "queue", "retry", "msg_0000000000000000", "--json")  # unknown: refused alike
    assert r.code == EXIT_REFUSED and r.json()["success"] is False
    assert (await api.client.post("/api/v1/messages/msg_0000000000000000/retry")).status_code == NOT_FOUND
    for _ in range(200):  # the retried attempts end (deferred again) before the deletes
        if all(api.gw.store.queue.show(m).recipients[0].attempts == 2 and
               api.gw.store.queue.show(m).recipients[0].state == "deferred" for m in mids):
            break
        await asyncio.sleep(0.05)
    r = await relay(api, "queue", "delete", mids[0], "--json")
    assert (r.code, r.json()) == (EXIT_OK, {"success": True, "deleted": mids[0]})
    resp = await api.client.delete(f"/api/v1/messages/{mids[1]}")
    assert (resp.status_code, resp.json()) == (OK, {"success": True, "deleted": mids[1]})
    for mid in mids:
        assert (await api.client.get(f"/api/v1/messages/{mid}")).status_code == NOT_FOUND
