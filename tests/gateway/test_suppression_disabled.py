"""No enabled policy provides the suppression list (``[policies] enabled`` without ``suppression``):
``/api/v1/suppressions`` answers 501 and ``relay suppression`` exits 1, both with "suppression
policy is not enabled"; a hard bounce is simply not recorded (the DSN still goes)."""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from relay.cli.main import main as relay_cli
from relay.store import models as m
from tests.conftest import wait_for
from tests.support.api import Api, send_body, start_api

OK, NOT_ENABLED = 200, 501
EXIT_REFUSED = 1
MESSAGE = "suppression policy is not enabled"


@pytest.fixture
async def api(gateway_factory, sink_factory):
    """A running gateway whose only policy is ``limits``."""
    a = await start_api(gateway_factory, sink_factory, policies={"enabled": ["limits"]})
    async with a.client:
        yield a


async def relay(a: Api, *args: str, policies: str = "[]") -> SimpleNamespace:
    """``relay ARGS`` on the gateway's data dir, with ``RELAY_POLICIES_ENABLED=policies``, in a thread."""
    env = {**{k: None for k in os.environ if k.startswith("RELAY_")}, "RELAY_DATA_DIR": str(a.gw.settings.data_dir),
           "RELAY_HOSTNAME": a.gw.settings.hostname, "RELAY_POLICIES_ENABLED": policies}
    result = await asyncio.to_thread(CliRunner(env=env).invoke, relay_cli, list(args), input="a@dest.org\n",
                                     catch_exceptions=False)
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr,
                           json=lambda: json.loads(result.stdout))


async def test_the_api_answers_501(api: Api):
    assert api.gw.policies.suppression_book is None
    for method, path, kw in (("GET", "/api/v1/suppressions", {}),
                             ("POST", "/api/v1/suppressions", {"json": {"email": "a@dest.org"}}),
                             ("DELETE", "/api/v1/suppressions/a@dest.org", {}),
                             ("DELETE", "/api/v1/suppressions", {"params": {"email": "a@dest.org"}})):
        r = await api.client.request(method, path, **kw)
        assert (r.status_code, r.json()) == (NOT_ENABLED, {"success": False, "error": MESSAGE}), (method, path)
    assert api.count(m.Suppression) == 0


@pytest.mark.parametrize("args", [("list",), ("add", "a@dest.org"), ("remove", "a@dest.org"), ("import", "-"),
                                  ("export",)])
async def test_the_cli_exits_1(api: Api, args):
    account = api.p.account
    r = await relay(api, "suppression", *args, "--account", account)
    assert (r.code, r.out, r.err) == (EXIT_REFUSED, "", f"relay: {MESSAGE}\n")
    r = await relay(api, "suppression", *args, "--account", account, "--json")
    assert (r.code, r.json()) == (EXIT_REFUSED, {"success": False, "error": MESSAGE})
    # enabled again (the same store): the command works
    r = await relay(api, "suppression", "list", "--account", account, "--json", policies='["suppression"]')
    assert (r.code, r.json()) == (0, [])


async def test_a_hard_bounce_is_not_recorded_and_the_dsn_still_goes(api: Api):
    api.sink.rcpt_replies["gone@dest.org"] = "550 5.1.1 No such user"
    r = await api.client.post("/api/v1/send", json=send_body(api.p, to=[{"email": "gone@dest.org"}]))
    assert r.status_code == OK, r.text
    mid = r.json()["message_id"]

    def dsns() -> list:
        return [x for x in api.sink.received if x.mail_from in ("", "<>")]

    await wait_for(lambda: len(dsns()) == 1)  # the bounce stage went on after it had no list to record in
    view = api.gw.store.queue.show(mid)
    assert [(x.address, x.state, x.last_code) for x in view.recipients] == [("gone@dest.org", "bounced", 550)]
    assert dsns()[0].rcpt_tos == [api.p.alias]
    assert api.count(m.Suppression) == 0
    r = await api.client.post("/api/v1/send", json=send_body(api.p, to=[{"email": "gone@dest.org"}]))
    assert r.status_code == OK, r.text  # not suppressed: nothing keeps the address
