"""SIGHUP: re-read the configuration and the TLS certificate, apply what can change safely.

Open sessions are never dropped: new limits and the new certificate apply to the next connection
(and the next STARTTLS). Keys that need a restart (listeners, workers, database, data_dir...) are
named in a warning and keep their running value until then. A configuration file that no longer
loads is reported and changes nothing; the certificate is still re-read (a renewed file in place).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
import ssl
from typing import Any, Protocol

from pydantic import BaseModel

from relay.ops import metrics
from relay.ops.config import RELOADABLE, Settings, changed_keys, load_settings
from relay.vocab import ConfigError
from relay.ops.logs import apply_log_settings
from relay.ops.tls import ensure_certificate, server_context, swap_certificate

__all__ = ["ReloadReport", "merge_reloadable", "reload_gateway"]

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    applied: list[str] = field(default_factory=list)  # changed keys now in force
    restart_required: list[str] = field(default_factory=list)  # changed keys that wait for a restart
    certificate: str | None = None  # the certificate file now served
    error: str | None = None  # the file did not load: nothing changed but the certificate

    @property
    def ok(self) -> bool:
        return self.error is None


def merge_reloadable(old: Settings, new: Settings, keys: set[str]) -> Settings:
    """*old* with the reloadable *keys* taken from *new* (frozen models: copied, never mutated)."""
    sections: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        if name:
            sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
        else:
            top[key] = getattr(new, key)
    update: dict[str, Any] = dict(top)
    for section, values in sections.items():
        current = getattr(old, section)
        assert isinstance(current, BaseModel)
        update[section] = current.model_copy(update=values)
    merged = old.model_copy(update=update)
    merged._source = old.source_path
    return merged


class Reloadable(Protocol):
    """What a reload needs of the running gateway (:class:`relay.gateway.Gateway` is one)."""

    settings: Settings
    env: Mapping[str, str] | None
    worker: int
    tls_context: ssl.SSLContext

    def apply(self, settings: Settings) -> None:
        """Push the reloadable values into every running component (each one's own ``apply``)."""


def reload_gateway(gw: Reloadable, env: Mapping[str, str] | None = None) -> ReloadReport:
    """Reload *gw* in place. Never raises for bad input."""
    report = ReloadReport()
    old: Settings = gw.settings
    try:
        new = load_settings(old.source_path, env if env is not None else gw.env or os.environ)
    except ConfigError as exc:
        report.error = str(exc)
        new = old
    changed = changed_keys(old, new)
    report.applied = sorted(changed & RELOADABLE)
    report.restart_required = sorted(changed - RELOADABLE)
    settings = merge_reloadable(old, new, set(report.applied))
    try:
        cert, key = ensure_certificate(settings.tls.cert, settings.tls.key, settings.data_dir, settings.hostname)
        swap_certificate(gw.tls_context, server_context(cert, key))
        report.certificate = str(cert)
    except ConfigError as exc:  # keep serving the old certificate, and the old tls keys
        report.error = f"{report.error}\n{exc}" if report.error else str(exc)
        settings = merge_reloadable(old, settings.model_copy(update={"tls": old.tls}), set(report.applied))
        report.applied = [k for k in report.applied if not k.startswith("tls.")]
    apply_log_settings(settings.log.level, settings.log.format)
    gw.apply(settings)
    metrics.reloaded(report.ok)
    if report.error:
        log.error("reload: configuration not (fully) applied; still running with the previous values",
                  extra={"error": report.error})
    log.info("reloaded", extra={"changed": report.applied, "certificate": report.certificate,
                                "worker": gw.worker})
    if report.restart_required:
        log.warning("reload: these settings changed but need a restart: %s", ", ".join(report.restart_required),
                    extra={"restart_required": report.restart_required})
    return report
