"""relay.ops.config as a package: the public names, the env naming rule, a pure schema, the log name."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from relay.ops import config
from relay.ops.config import Settings, env_names, settings_from_dict

PACKAGE = Path(config.__file__).resolve().parent

PUBLIC = {
    "ENV_CONFIG",
    "ENV_MASTER_KEY",
    "ENV_PREFIX",
    "RELOADABLE",
    "ApiSettings",
    "DatabaseSettings",
    "DeliverySettings",
    "DnsSettings",
    "LogSettings",
    "PoliciesSettings",
    "SecretsSettings",
    "Settings",
    "SmtpSettings",
    "TlsSettings",
    "Trusted",
    "changed_keys",
    "env_names",
    "load_settings",
    "mask_url",
    "parse_hostport",
    "restart_required",
    "settings_from_dict",
}


def test_public_names_are_importable_from_the_package():
    assert set(config.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(config, name) is not None, name


def test_every_key_has_its_env_name():
    """RELAY_<SECTION>_<KEY> / RELAY_<KEY> for every key of the schema, and nothing else."""
    keys = set()
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            keys |= {f"{name}.{key}" for key in section.model_fields if (name, key) != ("policies", "options")}
        else:
            keys.add(name)
    names = env_names()
    assert set(names.values()) == keys
    for env, key in names.items():
        assert env == "RELAY_" + key.upper().replace(".", "_")


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("module", ["schema.py", "values.py"])
def test_schema_reads_no_file_and_no_environment(module):
    path = PACKAGE / module
    allowed = {
        "__future__",
        "collections.abc",
        "ipaddress",
        "os",  # os.path and os.fspath only, checked below
        "pathlib",
        "pydantic",
        "socket",
        "typing",
        "urllib.parse",
        "relay.ops.config.values",
    }
    assert _imports(path) <= allowed
    names = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
    names |= {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
    assert not names & {"environ", "getenv", "open", "read_text", "read_bytes"}


def test_unknown_env_key_warns_under_the_config_logger(caplog):
    with caplog.at_level(logging.WARNING, logger="relay.ops.config"):
        settings_from_dict({}, {"RELAY_SMTP_BOGUS": "1", "RELAY_SOMETHING_ELSE": "2"})
    warnings = [(r.name, r.getMessage()) for r in caplog.records]
    assert warnings == [("relay.ops.config", "config: ignoring env RELAY_SMTP_BOGUS: it names no settings key")]
