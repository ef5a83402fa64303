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
    check = subprocess.run([sys.executable, "-c", "from relay.gateway import check_master_key, Gateway; "
                            "from relay.ops.config import load_settings; import os; "
                            "g = Gateway(load_settings(None)); g.store.close(); print('ok')"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "ok", check.stderr[-2000:]
