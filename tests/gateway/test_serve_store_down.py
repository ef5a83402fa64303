"""`relay serve` with a database it cannot reach says so in one line and exits 3 (the CLI's
convention for "cannot reach the store"), no traceback, no password."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import free_port


def test_serve_with_the_database_down_exits_3(tmp_path):
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DATA_DIR": str(tmp_path / "data"), "RELAY_HOSTNAME": "relay.test",
                "RELAY_DATABASE_URL": f"postgresql://relay:s3cret@127.0.0.1:{port}/relay",
                "RELAY_SMTP_SUBMISSION": f"127.0.0.1:{free_port()}", "RELAY_SMTP_SMTPS": f"127.0.0.1:{free_port()}",
                "RELAY_API_LISTEN": f"127.0.0.1:{free_port()}"})
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-1500:])
    assert f"relay: cannot start: cannot reach the store postgresql://relay:***@127.0.0.1:{port}/relay" in proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
