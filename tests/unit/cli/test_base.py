"""What every command shares: one exit-code convention, and the data directory never made by accident."""

from __future__ import annotations

import json
import stat

import pytest

from relay.cli.base import EXIT_CODES_HELP

NO_DATA_DIR = dict(RELAY_DATA_DIR=None)


# -- exit codes: 0 done, 1 not found / conflict / refused, 2 usage or bad input, 3 no store -----------


def test_relay_help_documents_the_exit_codes(relay):
    r = relay("--help")
    assert r.exit_code == 0
    assert " ".join(EXIT_CODES_HELP.split()) in " ".join(r.stdout.split())
    assert "0 done; 1 not found, conflict or refused; 2 usage or bad input" in EXIT_CODES_HELP
    assert "3 cannot reach the store" in EXIT_CODES_HELP


def test_not_found_and_conflict_are_1(relay):
    r = relay("account", "remove", "nobody")
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr.startswith("relay: ") and "nobody" in r.stderr
    assert relay("account", "create", "acme").exit_code == 0
    r = relay("account", "create", "acme")
    assert (r.exit_code, r.stdout) == (1, "")
    assert "acme" in r.stderr


def test_usage_and_bad_input_are_2(relay):
    r = relay("account", "create")  # click: missing argument
    assert r.exit_code == 2 and "Missing argument 'NAME'" in r.stderr
    relay("account", "create", "acme")
    r = relay("suppression", "add", "not-an-address", "--account", "acme")  # the service: Invalid
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.startswith("relay: ")
    r = relay("account", "list", RELAY_SMTP_SUBMISION="0.0.0.0:587")  # the configuration
    assert r.exit_code == 2
    assert r.stderr == ("relay: config: unknown environment variable RELAY_SMTP_SUBMISION: it names no settings key; "
                        "the closest known is RELAY_SMTP_SUBMISSION\n")


def test_refusals_under_json_are_json_on_stdout_with_the_same_code(relay):
    r = relay("account", "remove", "nobody", "--json")
    assert r.exit_code == 1 and r.stderr == ""
    assert json.loads(r.stdout)["success"] is False


def test_a_store_that_cannot_be_reached_is_3_and_its_password_is_not_shown(relay):
    url = "postgresql://relay:hunter2@127.0.0.1:1/relay"
    r = relay("account", "list", RELAY_DATABASE_URL=url)
    assert (r.exit_code, r.stdout) == (3, "")
    assert r.stderr.startswith("relay: cannot reach the store postgresql://relay:***@127.0.0.1:1/relay: ")
    assert "hunter2" not in r.stderr and "Traceback" not in r.stderr


# -- the data directory --------------------------------------------------------------------------------


def test_admin_commands_refuse_where_there_is_no_data_dir_and_create_none(relay, tmp_path):
    for args in (("account", "list"), ("account", "create", "acme"), ("key", "list"), ("queue", "list")):
        r = relay(*args, **NO_DATA_DIR)
        assert (r.exit_code, r.stdout) == (3, ""), args
        assert r.stderr.startswith(f"relay: no data directory at {tmp_path / 'relay-data'} (no --config, RELAY_CONFIG "
                                   "or RELAY_DATA_DIR given"), r.stderr
        assert "give --config FILE (env RELAY_CONFIG) or env RELAY_DATA_DIR" in r.stderr
        assert "`relay init`" in r.stderr
    assert not (tmp_path / "relay-data").exists()


def test_relay_init_creates_the_data_dir_then_admin_commands_run(relay, tmp_path):
    r = relay("init", **NO_DATA_DIR)
    assert r.exit_code == 0, r.output
    data = tmp_path / "relay-data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "master.key").is_file() and (data / "tls" / "cert.pem").is_file() and (data / "relay.db").is_file()
    assert r.stdout.splitlines()[:3] == [f"data dir     {data}  (created)", f"master key   {data / 'master.key'}  (created)",
                                         f"certificate  {data / 'tls' / 'cert.pem'}  (created)"]
    assert "Back up the master key" in r.stdout
    assert relay("account", "create", "acme", **NO_DATA_DIR).exit_code == 0
    again = relay("init", "--json", **NO_DATA_DIR)
    assert again.exit_code == 0 and json.loads(again.stdout)["created"] == []


def test_with_a_config_file_admin_commands_may_create_the_data_dir(relay, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f'data_dir = "{tmp_path / "elsewhere"}"\n')
    r = relay("--config", str(config), "account", "list", **NO_DATA_DIR)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "elsewhere").is_dir() and not (tmp_path / "relay-data").exists()
    r = relay("account", "list", RELAY_CONFIG=str(config), RELAY_DATA_DIR=None)
    assert r.exit_code == 0


def test_with_relay_data_dir_admin_commands_may_create_it(relay, tmp_path):
    r = relay("account", "list")  # the fixture's RELAY_DATA_DIR, not yet there
    assert r.exit_code == 0 and (tmp_path / "data").is_dir()


@pytest.mark.parametrize("args", [("health",), ("--help",), ("account", "--help")])
def test_commands_that_need_no_store_do_not_look_for_one(relay, tmp_path, args):
    r = relay(*args, RELAY_DATA_DIR=None, RELAY_API_LISTEN="127.0.0.1:1")
    assert r.exit_code in (0, 1) and "no data directory" not in r.stderr
    assert not (tmp_path / "relay-data").exists()
