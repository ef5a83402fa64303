"""A resolver that does not answer is reported as such, never as a missing record: `relay domain
verify` exits 1 naming the timeout, `POST /domains/:id/verify` answers 503; nothing is verified."""

from __future__ import annotations

import asyncio
import os

from click.testing import CliRunner

from relay.cli.main import main as relay_cli
from tests.conftest import free_port
from tests.support.api import start_api


class Silent(asyncio.DatagramProtocol):
    """A DNS server that reads every query and answers none."""


async def test_a_resolver_timeout_is_not_a_missing_record(gateway_factory, sink_factory):
    loop = asyncio.get_running_loop()
    port = free_port()
    transport, _ = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", port))
    try:
        a = await start_api(gateway_factory, sink_factory, dns={"nameservers": ["127.0.0.1"], "port": port,
                                                                "timeout": 0.3})
        async with a.client:
            r = await a.client.post("/api/v1/domains", json={"domain": "slow.test"})
            assert r.status_code == 200, r.text
            domain_id = r.json()["domain"]["id"]
            r = await a.client.post(f"/api/v1/domains/{domain_id}/verify")
            assert (r.status_code, r.json()["error"]) == (503, (
                "the DNS lookup of _relay-verification.slow.test TXT timed out (resolver 127.0.0.1 port "
                f"{port}): nothing was decided, try again"))
            env = {**{k: None for k in os.environ if k.startswith("RELAY_")},
                   "RELAY_DATA_DIR": str(a.gw.settings.data_dir), "RELAY_HOSTNAME": a.gw.settings.hostname,
                   "RELAY_DNS_NAMESERVERS": "127.0.0.1", "RELAY_DNS_PORT": str(port), "RELAY_DNS_TIMEOUT": "0.3"}
            result = await asyncio.to_thread(CliRunner(env=env).invoke, relay_cli, ["domain", "verify", "slow.test"],
                                             catch_exceptions=False)
            assert result.exit_code == 1, (result.stdout, result.stderr)
            assert "timed out" in result.stderr and "does not hold" not in result.stderr
            assert a.gw.store.directory.get_domain_by_id(domain_id).verified is False
    finally:
        transport.close()
