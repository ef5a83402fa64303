"""The CLI in-process (click's CliRunner), on a data dir of the test's own, with no RELAY_* from outside."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner, Result

from relay.cli.main import main


class Relay:
    def __init__(self, env: dict[str, str | None]) -> None:
        self.env = env

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        return CliRunner().invoke(main, list(args), input=input, env={**self.env, **env})


@pytest.fixture
def relay(tmp_path, monkeypatch):
    """``relay`` run in an empty working directory, with RELAY_DATA_DIR=<tmp>/data."""
    monkeypatch.chdir(tmp_path)
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), RELAY_HOSTNAME="relay.test")
    return Relay(env)
