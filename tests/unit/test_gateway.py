"""relay.gateway: start-up refuses a library version whose internals the compat modules were not written for."""

from __future__ import annotations

import importlib.metadata

from click.testing import CliRunner

from relay.cli.main import main
from relay.gateway import COMPAT_CHECKS, check_libraries


def test_the_installed_libraries_pass():
    check_libraries()
    assert len(COMPAT_CHECKS) >= 2


def test_serve_refuses_an_unsupported_dkimpy_naming_it(tmp_path, monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.0.0" if name == "dkimpy" else real(name))
    config = tmp_path / "relay.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "serve"])
    assert result.exit_code == 2
    assert "dkimpy 9.0.0" in result.output and ">=1.1.5,<1.2" in result.output
    assert not (tmp_path / "data").exists()  # refused before anything was created
