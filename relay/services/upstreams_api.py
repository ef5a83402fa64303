"""Upstream relays as the HTTP API manages them (the seeds call them "SMTP pools": ``/api/v1/smtp-pools``).

Each belongs to its IP pool's owner. An account's ``admin`` key sees and changes only its own
upstreams, in its own IP pools, and their hosts must be public addresses (``[security]
allow_targets`` aside); an ``operator`` key sees every upstream and adds the operator's. Another
owner's upstream is "not found", never "forbidden": its existence is not revealed.

The rules of a change are :class:`relay.services.admin.Admin`'s (shared with the CLI); after every
change the running pools are rebuilt from the store. A test connects (EHLO, TLS, AUTH) without mail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.ops.config import Settings
from relay.services import upstreams as upstream_rules
from relay.services.admin import Admin
from relay.store.directory import Directory, UpstreamRec
from relay.store.runner import DbRunner
from relay.vocab import DEFAULT_IP_POOL, Identity, Invalid, NotFound

# fields a change may leave out but not set to null
NOT_NULL = ("name", "host", "port", "encryption", "ip_pool", "priority", "weight", "verify_tls", "is_active")


def owner_of(ident: Identity) -> str | None:
    """Whose upstreams a key manages: None (the operator's, and it sees all) for an operator key."""
    return None if ident.operator else ident.account_id


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

    async def upstreams(self, ident: Identity) -> list[UpstreamRec]:
        if ident.operator:
            return list(await self.runner.read(self.directory.list_upstreams))
        return list(await self.runner.read(self.directory.list_upstreams, None, account_id=ident.account_id))

    async def get(self, ident: Identity, upstream_id: str) -> UpstreamRec:
        """By id only (not by name), and only one ``ident`` may see; else NotFound."""
        rec: UpstreamRec = await self.runner.read(self.directory.get_upstream, upstream_id)
        if rec.id != upstream_id or not (ident.operator or rec.account_id == ident.account_id):
            raise NotFound(upstream_id)
        return rec

    async def _check_host(self, ident: Identity, host: str, port: int) -> None:
        if owner_of(ident) is not None:
            await upstream_rules.check_host(self.settings, host, port)

    async def add(self, ident: Identity, **fields: Any) -> UpstreamRec:
        """A new upstream of the key's owner (``fields``: :meth:`Admin.add_upstream`'s; ``ip_pool`` None:
        ``default`` for the operator, the account's name for an account). Password stored encrypted."""
        if fields.get("ip_pool") is None:
            fields["ip_pool"] = DEFAULT_IP_POOL if ident.operator else ident.account_name
        await self._check_host(ident, fields["host"], fields["port"])
        account = None if ident.operator else ident.account_name
        rec: UpstreamRec = await self.runner.write(self.admin.add_upstream, account=account, **fields)
        await self._reload()
        return rec

    async def update(self, ident: Identity, upstream_id: str, password: str | None,
                     changes: dict[str, Any]) -> UpstreamRec:
        rec = await self.get(ident, upstream_id)
        for f in NOT_NULL:
            if f in changes and changes[f] is None:
                raise Invalid("must not be null", f)
        if rec.account_id is not None and ("host" in changes or "port" in changes):
            await upstream_rules.check_host(self.settings, changes.get("host", rec.host), changes.get("port", rec.port))
        updated: UpstreamRec = await self.runner.write(self.admin.update_upstream, rec, password=password, **changes)
        await self._reload()
        return updated

    async def remove(self, ident: Identity, upstream_id: str) -> None:
        rec = await self.get(ident, upstream_id)
        await self.runner.write(self.admin.remove_upstream, rec.id)
        await self._reload()

    async def probe(self, ident: Identity, upstream_id: str) -> dict[str, Any]:
        """EHLO, TLS and AUTH against the relay, no mail: ``{success, message, latencyMs, error}``."""
        rec = await self.get(ident, upstream_id)
        return await upstream_rules.probe(self.settings, self.admin, rec)
