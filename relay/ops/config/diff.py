"""Reload support: which keys a running process may pick up on SIGHUP, and which keys changed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from relay.ops.config.schema import Settings

__all__ = ["RELOADABLE", "changed_keys", "restart_required"]

#: Dotted keys a running process may pick up on reload (SIGHUP). Everything else (listeners,
#: worker count, database, data_dir, hostname, master key, pool sizes, policies) needs a restart.
RELOADABLE: frozenset[str] = frozenset(
    {
        "log.level",
        "log.format",
        "tls.cert",
        "tls.key",
        "smtp.trusted",
        "smtp.max_message_size",
        "smtp.data_memory_budget",
        "smtp.max_recipients",
        "smtp.max_connections_per_ip",
        "smtp.command_timeout",
        "smtp.data_timeout",
        "smtp.max_errors",
        "smtp.max_connections",
        "smtp.auth_max_failures",
        "smtp.auth_lockout",
        "smtp.shutdown_timeout",
        "smtp.hide_client_address",
        "api.public_url",
        "api.session_ttl",
        "api.password_link_ttl",
        "delivery.retry_base",
        "delivery.retry_max",
        "delivery.max_age",
        "delivery.connect_timeout",
        "delivery.command_timeout",
        "delivery.poll_interval",
        "delivery.verify_certificates",
        "dns.nameservers",
        "dns.port",
        "dns.timeout",
        "system.ip_pool",
        "scopes.transactional",
        "scopes.marketing",
        "aliases.verify_link_ttl",
    }
)


def _flatten(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for key in type(value).model_fields:
                out[f"{name}.{key}"] = getattr(value, key)
        else:
            out[name] = value
    return out


def changed_keys(old: Settings, new: Settings) -> set[str]:
    """Dotted keys whose values differ between two settings objects."""
    a, b = _flatten(old), _flatten(new)
    return {key for key in a if a[key] != b[key]}


def restart_required(old: Settings, new: Settings) -> set[str]:
    """Changed keys that a reload cannot apply (not in :data:`RELOADABLE`)."""
    return changed_keys(old, new) - RELOADABLE
