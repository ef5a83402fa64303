"""relay.ops.config as a package: the public names, the env naming rule, a pure schema, the log name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from relay.ops import config
from relay.ops.config import Settings, env_names, settings_from_dict
from relay.vocab import ConfigError

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


@pytest.mark.parametrize("name,closest", [
    ("RELAY_SMTP_BOGUS", "RELAY_SMTP_"),  # under a section's prefix: some key of that section
    ("RELAY_SMTP_SUBMISION", "RELAY_SMTP_SUBMISSION"),
    ("RELAY_DATADIR", "RELAY_DATA_DIR"),  # a near miss of a top-level key
    ("RELAY_HOST_NAME", "RELAY_HOSTNAME"),
    ("RELAY_POLICIES_QUOTA_KEY_DAILY", "RELAY_POLICIES_ENABLED"),  # no [policies.quota] table in the file
])
def test_an_unknown_env_key_stops_start_up_naming_it_and_the_closest_known(name, closest):
    with pytest.raises(ConfigError) as err:
        settings_from_dict({}, {name: "1", "RELAY_SOMETHING_ELSE": "2"})
    message = str(err.value)
    assert message.startswith(f"config: unknown environment variable {name}: it names no settings key; "
                              f"the closest known is {closest}")
    assert "RELAY_SOMETHING_ELSE" not in message


def test_other_tools_relay_variables_are_left_alone():
    s = settings_from_dict({}, {"RELAY_TEST_PG": "postgresql://x@y/z", "RELAY_SOMETHING_ELSE": "2",
                                "RELAY_UPSTREAM_PASSWORD": "pw", "RELAY_MASTER_KEY": "k", "RELAY_CONFIG": "f"})
    assert s.smtp.submission
