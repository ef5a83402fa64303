"""relay.ops.config: defaults, file + env layering, error messages, the sample relay.toml."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from relay.ops.config import (
    RELOADABLE,
    Settings,
    changed_keys,
    env_names,
    load_settings,
    parse_hostport,
    restart_required,
    settings_from_dict,
)
from relay.vocab import ConfigError

SAMPLE = Path(__file__).resolve().parents[3] / "relay.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_no_file_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.smtp.submission == "127.0.0.1:2587"
    assert s.smtp.smtps == "127.0.0.1:2465"
    assert s.smtp.relay is None
    assert s.api.listen == "127.0.0.1:8025"
    assert parse_hostport(s.smtp.submission)[1] == 2587
    assert s.smtp.listeners() == {"submission": ("127.0.0.1", 2587), "smtps": ("127.0.0.1", 2465)}
    assert s.data_dir.is_absolute()
    assert s.data_dir == Path(os.path.abspath(tmp_path / "relay-data"))
    assert s.database_url == f"sqlite:///{s.data_dir}/relay.db"
    assert s.master_key_path == s.data_dir / "master.key"
    assert s.public_url == "http://127.0.0.1:8025"
    assert s.hostname
    assert s.delivery.retry_base == 60 and s.delivery.verify_certificates is True
    assert s.log.level == "INFO" and s.log.format == "text"
    assert s.policies.enabled == ["limits", "suppression", "quota"] and s.policies.options == {}
    assert s.source_path is None


def test_settings_are_frozen():
    s = load_settings(env={})
    with pytest.raises(ValidationError):
        s.hostname = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.smtp.workers = 3  # type: ignore[misc]


def test_relay_config_env_names_the_file(tmp_path):
    path = write(tmp_path, 'hostname = "mx.example.org"\n')
    s = load_settings(env={"RELAY_CONFIG": str(path)})
    assert s.hostname == "mx.example.org"
    assert s.source_path == path


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(env={"RELAY_CONFIG": str(tmp_path / "nope.toml")})


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[smtp\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(path, env={})


def test_file_and_env_override(tmp_path):
    path = write(
        tmp_path,
        """
data_dir = "data"
hostname = "mail.example.com"
[smtp]
submission = "0.0.0.0:587"
relay = "[::1]:25"
max_recipients = 5
trusted = [ { network = "10.1.2.3/8", account = "acme" } ]
[delivery]
retry_base = 30
[database]
url = "postgresql://relay:hunter2@db/relay"
[policies]
enabled = ["limits", "quota"]
[policies.quota]
messages_per_day = 100
""",
    )
    env = {
        "RELAY_SMTP_SUBMISSION": "127.0.0.1:2525",
        "RELAY_DELIVERY_RETRY_BASE": "1",
        "RELAY_DELIVERY_VERIFY_CERTIFICATES": "false",
        "RELAY_SMTP_SMTPS": "",
        "RELAY_LOG_LEVEL": "debug",
        "RELAY_DNS_NAMESERVERS": "1.1.1.1,9.9.9.9",
        "RELAY_POLICIES_QUOTA_MESSAGES_PER_DAY": "7",
        "RELAY_MASTER_KEY": "ignored-here",
        "RELAY_SOMETHING_ELSE": "ignored",  # far from every key: another tool's
        "RELAY_UPSTREAM_PASSWORD": "read by the CLI",
        "PATH": "/bin",
    }
    s = load_settings(path, env=env)
    assert s.data_dir == Path(os.path.abspath("data"))
    assert s.hostname == "mail.example.com"
    assert s.smtp.submission == "127.0.0.1:2525"  # env beats file
    assert s.smtp.smtps is None  # "" disables
    assert s.smtp.relay == "[::1]:25"
    assert s.smtp.max_recipients == 5
    assert s.smtp.trusted[0].network == ipaddress.ip_network("10.0.0.0/8")
    assert s.smtp.trusted_account("10.9.9.9") == "acme"
    assert s.smtp.trusted_account("::ffff:10.9.9.9") == "acme"
    assert s.smtp.trusted_account("192.168.1.1") is None
    assert s.delivery.retry_base == 1.0
    assert s.delivery.verify_certificates is False
    assert s.log.level == "DEBUG"
    assert s.dns.nameservers == ["1.1.1.1", "9.9.9.9"]
    assert s.policies.enabled == ["limits", "quota"]
    assert s.policies.options == {"quota": {"messages_per_day": 7}}
    assert s.policies.settings_for("quota") == {"messages_per_day": 7}
    assert s.policies.settings_for("limits") == {}
    assert s.database_url == "postgresql://relay:hunter2@db/relay"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert "hunter2" not in repr(s.safe_dump())


def test_env_toml_values():
    s = load_settings(
        env={
            "RELAY_SMTP_TRUSTED": '[{network="127.0.0.0/8", account="acme"}, {network="::1/128", account="ops"}]',
            "RELAY_SMTP_MAX_MESSAGE_SIZE": "1_000",
            "RELAY_HOSTNAME": "123",  # a string key keeps the raw text even if it parses as a number
            "RELAY_POLICIES_ENABLED": '["a", "b"]',
            "RELAY_API_PUBLIC_URL": "https://relay.example.com/",
        }
    )
    assert [t.account for t in s.smtp.trusted] == ["acme", "ops"]
    assert s.smtp.max_message_size == 1000
    assert s.hostname == "123"
    assert s.policies.enabled == ["a", "b"]
    assert s.public_url == "https://relay.example.com"


def test_public_url_wildcard_uses_hostname():
    s = load_settings(env={"RELAY_API_LISTEN": "0.0.0.0:8025", "RELAY_HOSTNAME": "relay.example.com"})
    assert s.public_url == "http://relay.example.com:8025"


def test_unknown_key_error_names_it(tmp_path):
    path = write(tmp_path, '[smtp]\nsubmisson = "0.0.0.0:587"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "smtp.submisson" in message and "unknown key" in message
    assert str(path) in message


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[smpt]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"config: smpt: unknown key"):
        load_settings(path, env={})


def test_bad_value_names_key_and_value(tmp_path):
    path = write(tmp_path, '[delivery]\nretry_base = "abc"\n[smtp]\nmax_recipients = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "config: delivery.retry_base: invalid value 'abc' (expected a number)" in message
    assert "config: smtp.max_recipients: invalid value 'many' (expected an integer)" in message
    assert f"file {path}" in message


def test_env_bad_value_names_env_var():
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RELAY_DELIVERY_RETRY_BASE": "abc"})
    message = str(info.value)
    assert "delivery.retry_base" in message and "'abc'" in message
    assert "env RELAY_DELIVERY_RETRY_BASE" in message


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RELAY_SMTP_SUBMISSION": "nope"}, "smtp.submission"),
        ({"RELAY_SMTP_SUBMISSION": "::1:587"}, "smtp.submission"),
        ({"RELAY_API_LISTEN": "host:99999"}, "api.listen"),
        ({"RELAY_SMTP_TRUSTED": '[{network="bogus", account="a"}]'}, "smtp.trusted[0].network"),
        ({"RELAY_LOG_LEVEL": "TRACE"}, "log.level"),
        ({"RELAY_LOG_FORMAT": "xml"}, "log.format"),
        ({"RELAY_SMTP_WORKERS": "0"}, "smtp.workers"),
        ({"RELAY_SMTP_WORKERS": "true"}, "smtp.workers"),
        ({"RELAY_DATABASE_URL": "mysql://x/y"}, "database.url"),
        ({"RELAY_DNS_NAMESERVERS": "not-an-ip"}, "dns.nameservers"),
        ({"RELAY_DELIVERY_RETRY_MAX": "1"}, "delivery"),
        ({"RELAY_TLS_CERT": "/etc/cert.pem"}, "tls"),
    ],
)
def test_bad_values(env, key):
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert f"config: {key}:" in str(info.value)
    assert "env RELAY_" in str(info.value)


def test_database_password_not_in_error():
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RELAY_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in str(info.value)


def test_policy_table_must_be_a_table(tmp_path):
    path = write(tmp_path, "[policies]\nquota = 5\n")
    with pytest.raises(ConfigError, match=r"policies\.quota"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:587", ("0.0.0.0", 587)),
        ("[::1]:587", ("::1", 587)),
        ("localhost:0", ("localhost", 0)),
        ("mail.example.com:25", ("mail.example.com", 25)),
    ],
)
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", "587", ":587", "host:", "host:x", "::1:587", "[::1]587", "[nope]:1", "h:70000"])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_reload_helpers():
    a = load_settings(env={})
    b = load_settings(env={"RELAY_LOG_LEVEL": "DEBUG", "RELAY_SMTP_SUBMISSION": "127.0.0.1:1"})
    assert changed_keys(a, b) == {"log.level", "smtp.submission"}
    assert restart_required(a, b) == {"smtp.submission"}
    assert {"log.level", "tls.cert", "tls.key", "delivery.retry_base"} <= RELOADABLE
    assert RELOADABLE <= set(env_names().values())


def test_env_names_built_from_fields():
    names = env_names()
    assert names["RELAY_SMTP_MAX_CONNECTIONS_PER_IP"] == "smtp.max_connections_per_ip"
    assert names["RELAY_SECRETS_MASTER_KEY_FILE"] == "secrets.master_key_file"
    assert names["RELAY_DATA_DIR"] == "data_dir"
    assert "RELAY_CONFIG" not in names and "RELAY_MASTER_KEY" not in names


# --------------------------------------------------------------------------- the sample file


def test_sample_relay_toml_loads():
    s = load_settings(SAMPLE, env={})
    assert s.model_dump(exclude={"hostname"}) == Settings().model_dump(exclude={"hostname"})


def _documented_defaults() -> dict[str, str]:
    """First ``# key = value`` line per dotted key in the sample (the documented default)."""
    section = ""
    found: dict[str, str] = {}
    for line in SAMPLE.read_text().splitlines():
        header = re.match(r"^\[([a-z_]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        item = re.match(r"^#\s*([a-z_]+)\s*=\s*(.+)$", line)
        if item:
            key = f"{section}.{item.group(1)}" if section else item.group(1)
            found.setdefault(key, item.group(2))
    return found


def test_sample_documents_every_key_with_its_default():
    documented = _documented_defaults()
    defaults = Settings(hostname="example.invalid")
    for dotted in env_names().values():
        if dotted == "hostname":
            assert "hostname" in documented
            continue
        assert dotted in documented, f"relay.toml does not document {dotted}"
        section_name, _, key_name = dotted.partition(".")
        default = getattr(getattr(defaults, section_name), key_name) if key_name else getattr(defaults, dotted)
        if default is None:
            continue  # no TOML spelling for "unset": the sample shows an example instead
        value = tomllib.loads(f"v = {documented[dotted]}")["v"]
        data: dict = {"hostname": "example.invalid"}
        if "." in dotted:
            section, key = dotted.split(".")
            data[section] = {key: value}
        else:
            data[dotted] = value
        parsed = settings_from_dict(data)
        assert parsed == defaults, f"relay.toml: documented default of {dotted} is not the default"


def test_data_memory_budget_holds_at_least_one_message(tmp_path):
    path = write(tmp_path, "[smtp]\nmax_message_size = 1000\ndata_memory_budget = 999\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "smtp.data_memory_budget (999) must be >= smtp.max_message_size (1000)" in str(info.value)


def test_body_memory_budget_holds_the_largest_request_body(tmp_path):
    from relay.api.limits import body_cap

    cap = body_cap(1_000_000)
    ok = write(tmp_path, f"[smtp]\nmax_message_size = 1000000\n[api]\nbody_memory_budget = {cap}\n")
    assert load_settings(ok, env={}).api.body_memory_budget == cap
    path = write(tmp_path, f"[smtp]\nmax_message_size = 1000000\n[api]\nbody_memory_budget = {cap - 1}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert f"must be >= the largest request body, smtp.max_message_size x 4/3 + 1 MiB ({cap})" in str(info.value)
