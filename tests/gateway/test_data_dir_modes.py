"""The data directory is private whatever the umask: an attacker with a shell account on the host
reads neither the database (keys' hashes, queued mail) nor the master key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def relay(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run([sys.executable, "-m", "relay.cli", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0o022))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_0700_and_files_0600_under_umask_022(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "relay.toml"
    config.write_text(f'data_dir = "{data}"\n')
    r = relay(config, "account", "create", "acme")
    assert r.returncode == 0, r.stderr
    assert mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "relay.db" for p in files) and any("master" in p.name for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_an_existing_open_data_dir_and_database_are_tightened(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "relay.toml"
    config.write_text(f'data_dir = "{data}"\n')
    assert relay(config, "account", "create", "acme").returncode == 0
    data.chmod(0o755)
    (data / "relay.db").chmod(0o644)  # as an older version left them under umask 022
    r = relay(config, "account", "list")
    assert r.returncode == 0, r.stderr
    assert (mode(data), mode(data / "relay.db")) == (0o700, 0o600)
