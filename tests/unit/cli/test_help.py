"""Every command and every option of ``relay`` says what it is for, in plain text (no RST markup)."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from relay.cli.main import main

RST = re.compile(r"``|::|(^|\s)\.\. |:[a-z]+:`")


def walk(cmd: click.Command, path: tuple[str, ...] = ("relay",)):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(main))


def test_the_tree_is_walked():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"relay account create", "relay domain verify", "relay key create", "relay queue show",
            "relay suppression import", "relay serve", "relay health", "relay init"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_and_option_has_help_without_rst_markup(path, cmd):
    assert (cmd.help or "").strip(), f"{' '.join(path)}: no help text"
    assert not RST.search(cmd.help), f"{' '.join(path)}: RST markup in {cmd.help!r}"
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.name == "help" or param.hidden:
            continue
        assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]}: no help text"
        assert not RST.search(param.help), f"{' '.join(path)} {param.opts[0]}: RST markup in {param.help!r}"


@pytest.mark.parametrize("args", [["suppression", "import", "--help"], ["suppression", "export", "--help"]])
def test_suppression_import_export_help_shows_no_raw_markup(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert "``" not in result.output and "::" not in result.output
    assert "CSV" in result.output
