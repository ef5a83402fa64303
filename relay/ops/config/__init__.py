"""Relay's configuration: one TOML file, read once at start, into one typed, frozen settings object.

Sources, weakest first:

1. built-in defaults (every key has one, so no file at all is a valid configuration);
2. the TOML file: ``load_settings(path)``, else the path in env ``RELAY_CONFIG``, else none;
3. environment overrides ``RELAY_<SECTION>_<KEY>`` (``RELAY_SMTP_SUBMISSION``,
   ``RELAY_DELIVERY_RETRY_BASE``), and ``RELAY_<KEY>`` for the top-level keys (``RELAY_DATA_DIR``,
   ``RELAY_HOSTNAME``).

The names of the environment variables are built from the models' fields, so keys containing
underscores are matched exactly, never split. An env value is parsed as a TOML value when it is one
(``1``, ``true``, ``["a", "b"]``, ``[{network="10.0.0.0/8", account="acme"}]``), else taken as the raw
string; list-of-string keys also accept ``a,b,c``. A ``RELAY_*`` variable that names no key stops
start-up (a ConfigError naming it and the closest known name) when it is under a section's prefix
(``RELAY_SMTP_...``) or a near miss of a key (``RELAY_DATADIR``); other names are ignored (other tools
use the prefix; ``RELAY_CONFIG``, ``RELAY_MASTER_KEY`` and ``RELAY_UPSTREAM_PASSWORD`` are read elsewhere).

Policy settings: under ``[policies]`` the only fixed key is ``enabled``. Every other key must be a
table holding one policy's own settings (``[policies.quota]``); these are collected, unvalidated,
into ``settings.policies.options`` (``dict[policy name, dict]``) for the policy to validate itself.
Keys of such tables that appear in the file can be overridden from env as
``RELAY_POLICIES_<POLICY>_<KEY>`` (``-`` in names becomes ``_``).

Every problem raises :class:`relay.vocab.ConfigError` naming the dotted key, the bad value and
where it came from (the file or the env variable).

Relative paths (``data_dir``, ``tls.cert``, ...) are resolved against the working directory when
loaded. ``RELOADABLE`` lists the keys that a reload (SIGHUP) may change in a running process; a
change to any other key needs a restart (see :func:`restart_required`).

Modules, by job: ``values`` (host:port, paths, networks, masked URLs), ``schema`` (the typed,
frozen settings models; pure), ``env`` (the ``RELAY_*`` overrides), ``errors`` (validation errors
into messages naming the key and the value), ``load`` (file + env + validation) and ``diff``
(``RELOADABLE`` and the changed keys). Import the public names from this package.
"""

from __future__ import annotations

from relay.ops.config.diff import RELOADABLE, changed_keys, restart_required
from relay.ops.config.env import ENV_CONFIG, ENV_MASTER_KEY, ENV_PREFIX, env_names
from relay.ops.config.load import load_settings, settings_from_dict
from relay.ops.config.schema import (
    ApiSettings,
    DatabaseSettings,
    DeliverySettings,
    DnsSettings,
    LogSettings,
    PoliciesSettings,
    SecretsSettings,
    Settings,
    SmtpSettings,
    TlsSettings,
    Trusted,
)
from relay.ops.config.values import mask_url, parse_hostport

__all__ = [
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
]
