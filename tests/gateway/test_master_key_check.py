"""A node given another master key than the store's secrets were sealed with refuses to start
(exit 2, naming the key's fingerprint and what it could not open), instead of reporting ready and
answering every submission 451."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

from relay.gateway import Gateway
from tests.conftest import free_port, make_settings, provision


def test_a_node_with_another_master_key_refuses_to_start(tmp_path):
    settings = make_settings(tmp_path)
    gw = Gateway(settings, env={})
    provision(gw, free_port())  # a DKIM key sealed with this data dir's master key
    gw.store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DATA_DIR": str(settings.data_dir), "RELAY_HOSTNAME": "relay.test",
                "RELAY_SMTP_SUBMISSION": f"127.0.0.1:{free_port()}", "RELAY_SMTP_SMTPS": f"127.0.0.1:{free_port()}",
                "RELAY_API_LISTEN": f"127.0.0.1:{free_port()}",
                "RELAY_MASTER_KEY": base64.b64encode(b"\x07" * 32).decode()})  # another node's key
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "does not open a DKIM private key in the store" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # the right key starts it (the data dir's own master.key)
    env.pop("RELAY_MASTER_KEY")
    check = subprocess.run([sys.executable, "-c", "from relay.gateway import Gateway; "
                            "from relay.ops.config import load_settings; import os; "
                            "g = Gateway(load_settings(None)); g.store.close(); print('ok')"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "ok", check.stderr[-2000:]


async def test_readyz_is_not_ready_while_the_key_cannot_open_a_secret(gateway_factory, sink_factory):
    """Two nodes started on an empty store with different keys both start; the moment the other one
    seals a secret, this node's /readyz says not ready (503) and names what it cannot open."""
    import httpx

    from relay.secrets import MasterKey
    from tests.gateway.test_ops import api_url

    sink = await sink_factory()
    gw = await gateway_factory()
    async with httpx.AsyncClient() as c:
        r = await c.get(api_url(gw, "/readyz"))
        assert r.json()["checks"]["secrets"] == {"ok": True}
        other = MasterKey.generate()  # the other node's key
        gw.store.directory.add_upstream(name="theirs", ip_pool="default", host="127.0.0.1", port=sink.port,
                                        encryption="none", username="u", password_enc=other.encrypt_str("pw", aad="theirs"))
        r = await c.get(api_url(gw, "/readyz"))
        assert r.status_code == 503
        assert r.json()["checks"]["secrets"] == {
            "ok": False, "error": "the master key does not open an upstream password in the store"}
        assert "pw" not in r.text
