"""Upstream relays as the HTTP API manages them (the seeds call them "SMTP pools": ``/api/v1/smtp-pools``).

They serve the whole gateway (operator infrastructure). The rules of a change are
:class:`relay.services.admin.Admin`'s (shared with the CLI); after every change the running pools are
rebuilt from the store. A test connects (EHLO, TLS, AUTH) without sending mail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.delivery.upstream import Upstream, UpstreamConfig
from relay.ops.config import Settings
from relay.services.admin import Admin
from relay.store.directory import Directory, UpstreamRec
from relay.store.runner import DbRunner
from relay.vocab import Invalid, NotFound

# fields a change may leave out but not set to null
NOT_NULL = ("name", "host", "port", "encryption", "ip_pool", "priority", "weight", "verify_tls", "is_active")


class UpstreamAdmin:
    def __init__(self, runner: DbRunner, directory: Directory, admin: Admin, settings: Settings,
                 load: Callable[[list[UpstreamRec]], None]) -> None:
        self.runner = runner
        self.directory = directory
        self.admin = admin
        self.settings = settings
        self.load = load  # rebuilds the running pools

    async def _reload(self) -> None:
        self.load(await self.runner.read(self.directory.list_upstreams))

    async def upstreams(self) -> list[UpstreamRec]:
        return list(await self.runner.read(self.directory.list_upstreams))

    async def get(self, upstream_id: str) -> UpstreamRec:
        """By id only (not by name), else NotFound."""
        rec: UpstreamRec = await self.runner.read(self.directory.get_upstream, upstream_id)
        if rec.id != upstream_id:
            raise NotFound(upstream_id)
        return rec

    async def add(self, **fields: Any) -> UpstreamRec:
        """A new upstream (``fields``: :meth:`Admin.add_upstream`'s); its password stored encrypted."""
        rec: UpstreamRec = await self.runner.write(self.admin.add_upstream, **fields)
        await self._reload()
        return rec

    async def update(self, upstream_id: str, password: str | None, changes: dict[str, Any]) -> UpstreamRec:
        rec = await self.get(upstream_id)
        for f in NOT_NULL:
            if f in changes and changes[f] is None:
                raise Invalid("must not be null", f)
        updated: UpstreamRec = await self.runner.write(self.admin.update_upstream, rec, password=password, **changes)
        await self._reload()
        return updated

    async def remove(self, upstream_id: str) -> None:
        rec = await self.get(upstream_id)
        await self.runner.write(self.admin.remove_upstream, rec.id)
        await self._reload()

    async def probe(self, upstream_id: str) -> dict[str, Any]:
        """EHLO, TLS and AUTH against the relay, no mail: ``{success, message, latencyMs, error}``."""
        rec = await self.get(upstream_id)
        d = self.settings.delivery
        up = Upstream(UpstreamConfig(id=rec.id, name=rec.name, host=rec.host, port=rec.port, encryption=rec.encryption,
                                     username=rec.username, password=self.admin.upstream_password(rec),
                                     verify_tls=rec.verify_tls, max_connections=1),
                      local_hostname=self.settings.hostname, connect_timeout=d.connect_timeout,
                      command_timeout=d.command_timeout)
        result: dict[str, Any] = await up.probe()
        return result
