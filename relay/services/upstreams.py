"""Upstream relays: the one place an upstream record becomes the delivery engine's
:class:`~relay.delivery.upstream.UpstreamConfig`, the check of an account's upstream host, and the
connection test (EHLO, TLS, AUTH, no mail) that the CLI (``relay upstream test``) and the API
(``POST /smtp-pools/{id}/test``) both run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.delivery import probe as probing
from relay.delivery.router import Router
from relay.delivery.upstream import Upstream, UpstreamConfig
from relay.ops.config import Settings
from relay.ops.targets import resolve_checked
from relay.services.admin import Admin
from relay.store.directory import UpstreamRec


def upstream_config(rec: UpstreamRec, password: str | None, *, default_max_connections: int) -> UpstreamConfig:
    """Every field of the record the delivery engine uses; ``max_connections`` falls back to
    ``[delivery] max_connections`` when the upstream sets none."""
    return UpstreamConfig(id=rec.id, name=rec.name, host=rec.host, port=rec.port, encryption=rec.encryption,
                          username=rec.username, password=password, verify_tls=rec.verify_tls,
                          priority=rec.priority, weight=rec.weight,
                          max_connections=rec.max_connections or default_max_connections, owner=rec.account_id)


def connection(settings: Settings, cfg: UpstreamConfig) -> Upstream:
    """An :class:`Upstream` with the gateway's hostname, ``[delivery]`` timeouts and, for an account's
    upstream, ``[security] allow_targets``."""
    d = settings.delivery
    return Upstream(cfg, local_hostname=settings.hostname, connect_timeout=d.connect_timeout,
                    command_timeout=d.command_timeout, idle_timeout=d.idle_timeout,
                    allow_targets=settings.security.allow_targets)


async def check_host(settings: Settings, host: str, port: int) -> None:
    """An account's upstream host must resolve to public addresses only (or to ``[security]
    allow_targets``): Invalid(field "host") otherwise. Checked again before every connection."""
    await resolve_checked(host, port, settings.security.allow_targets, field="host")


async def probe(settings: Settings, admin: Admin, rec: UpstreamRec) -> dict[str, Any]:
    """EHLO, TLS and AUTH against the upstream, no mail: ``{success, message, latencyMs[, error]}``."""
    cfg = upstream_config(rec, admin.upstream_password(rec), default_max_connections=1)
    return await probing.probe(connection(settings, cfg))


@dataclass(frozen=True)
class PoolHealth:
    """An IP pool's upstreams as one account may see them: its own by name, the operator's only counted."""

    ip_pool: str
    own: bool  # the account's own pool
    healthy: int
    total: int
    down: tuple[str, ...] = ()  # names of the account's own upstreams whose breaker is open


def pool_health(router: Router, account_id: str, ip_pools: Iterable[str]) -> list[PoolHealth]:
    """Health of the pools an account sends through (its aliases' pools and its own), by the delivery
    router's breakers; another owner's upstreams are never named."""
    out = []
    for pool in sorted(set(ip_pools)):
        owner = router.owners.get(pool)
        if owner is not None and owner != account_id:
            continue  # another account's pool: not this account's to see
        members = list(router.ip_pools.get(pool, ()))
        down = [u for u in members if router.breakers[u.cfg.id].failures >= router.threshold]
        own = owner == account_id
        out.append(PoolHealth(pool, own, len(members) - len(down), len(members),
                              tuple(u.name for u in down) if own else ()))
    return out
