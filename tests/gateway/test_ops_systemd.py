"""The systemd unit: what the issue asks of it, ``systemd-analyze verify`` clean, and a security
exposure of "OK" or better (``systemd-analyze security --offline``), when systemd-analyze exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.ops.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "relay.service"
ANALYZE = shutil.which("systemd-analyze")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_notify_watchdog_reload_and_hardening():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["WatchdogSec"] and d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert "@system-service" in d["SystemCallFilter"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert d["User"] == ["relay"] and d["StateDirectory"] == ["relay"]
    assert d["KillMode"] == ["mixed"]  # SIGTERM to the main process only: it stops its workers gracefully
    # the stop timeout leaves room for smtp.shutdown_timeout of the example config
    example = load_settings(ROOT / "systemd" / "relay.toml", env={})
    assert int(d["TimeoutStopSec"][0]) > example.smtp.shutdown_timeout
    assert example.data_dir == Path("/var/lib/relay") and example.smtp.listeners()["submission"][1] == 587
    assert example.smtp.listeners()["smtps"][1] == 465
    assert d["ExecStart"][0].endswith("--config /etc/relay/relay.toml serve")


def _installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's ``relay`` (verify checks it exists)."""
    relay = shutil.which("relay")
    if relay is None:
        pytest.skip("the relay command is not on PATH (pip install -e .)")
    unit = tmp_path / "relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/relay/bin/relay", relay))
    return unit


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path):
    unit = _installable_copy(tmp_path)
    res = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stdout + res.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_security_is_ok_or_better(tmp_path):
    unit = _installable_copy(tmp_path)
    res = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    if "--offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("systemd-analyze too old for --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", res.stdout)
    assert match, res.stdout[-2000:] + res.stderr
    score, level = float(match.group(1)), match.group(2)
    assert level in ("SAFE", "OK"), f"exposure {score} {level}"
    assert score <= 2.0  # README: 1.4 OK
