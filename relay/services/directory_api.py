"""An account's own directory objects as the HTTP API manages them: aliases, domains, API keys.

The tenancy rule lives here: an account sees and changes only its own objects; another account's
object is :class:`relay.vocab.NotFound`, exactly like one that does not exist. Every change that
the submission pipeline caches (aliases, domains, keys) invalidates its caches. The rules of each
change are :class:`relay.services.admin.Admin`'s (shared with the CLI); slow ones (key generation,
DNS lookups) run in their own thread so they never hold up the store writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from relay.services.admin import Admin, DnsRecord
from relay.store.directory import AliasRec, Directory, DomainRec, KeyRec
from relay.store.runner import DbRunner
from relay.vocab import Identity
from relay.vocab import Invalid, NotFound

DomainView = tuple[DomainRec, list[DnsRecord]]  # a domain with the DNS records to publish
ALIAS_CHANGEABLE = ("name", "is_default", "ip_pool")


class AccountDirectory:
    def __init__(self, runner: DbRunner, directory: Directory, admin: Admin, invalidate: Callable[[], None]) -> None:
        self.runner = runner
        self.directory = directory
        self.admin = admin
        self.invalidate = invalidate  # the pipeline's caches of keys, aliases and domains

    # -- aliases ------------------------------------------------------------------------------------
    async def aliases(self, ident: Identity) -> list[AliasRec]:
        return list(await self.runner.read(self.directory.list_aliases, ident.account_name))

    async def alias(self, ident: Identity, alias_id: str) -> AliasRec:
        """The account's alias ``alias_id`` (by id only, not by address), else NotFound."""
        alias = await self.runner.read(self.directory.get_alias, alias_id)
        if alias.id != alias_id or alias.account_id != ident.account_id:
            raise NotFound(alias_id)
        return alias

    async def add_alias(self, ident: Identity, email: str, *, ip_pool: str, name: str | None,
                        is_default: bool) -> tuple[AliasRec, str | None]:
        """An alias on a verified domain of the account; its verification email goes out now. The
        second value says why that email cannot go out yet (no upstream to carry it), or None."""
        alias, _ = await self.runner.write(self.admin.add_alias, email, account=ident.account_name, ip_pool=ip_pool,
                                           name=name, is_default=is_default)
        self.invalidate()
        return alias, await self.runner.read(self.admin.system_route_gap, alias.ip_pool)

    async def update_alias(self, ident: Identity, alias_id: str, changes: dict[str, Any],
                           unknown: Sequence[str] = ()) -> AliasRec:
        alias = await self.alias(ident, alias_id)
        if unknown:
            raise Invalid("Only name, is_default and ip_pool can be changed after creation", min(unknown))
        updated: AliasRec = await self.runner.write(self.admin.update_alias, alias, **changes)
        self.invalidate()
        return updated

    async def remove_alias(self, ident: Identity, alias_id: str) -> None:
        """Conflict while queued mail still uses it; Forbidden for the account's only verified alias."""
        alias = await self.alias(ident, alias_id)
        await self.runner.write(self.admin.remove_alias_checked, alias)
        self.invalidate()

    async def verification_link(self, token: str) -> AliasRec:
        """What the link's page shows (a GET changes nothing): NotFound for an unknown (or used)
        token, Expired past ``aliases.verify_link_ttl``."""
        alias: AliasRec = await self.runner.read(self.admin.verification_link_alias, token)
        return alias

    async def verify_alias(self, token: str) -> AliasRec:
        """The verification link's POST: NotFound for an unknown (or used) token, Expired for an old one."""
        alias: AliasRec = await self.runner.write(self.admin.verify_alias, None, token)
        self.invalidate()
        return alias

    # -- domains ------------------------------------------------------------------------------------
    def _view(self, rec: DomainRec) -> DomainView:
        return rec, self.admin.dns_records(rec)

    async def domains(self, ident: Identity) -> list[DomainView]:
        return [self._view(d) for d in await self.runner.read(self.directory.list_domains, ident.account_name)]

    async def _own_domain(self, ident: Identity, domain_id: str) -> DomainRec:
        rec: DomainRec = await self.runner.read(self.directory.get_domain_by_id, domain_id)
        if rec.account_id != ident.account_id:
            raise NotFound(domain_id)
        return rec

    async def domain(self, ident: Identity, domain_id: str) -> DomainView:
        return self._view(await self._own_domain(ident, domain_id))

    async def add_domain(self, ident: Identity, name: str) -> DomainView:
        """The account's claim, with fresh RSA-2048 and Ed25519 DKIM keys. Another account's unverified
        claim blocks nothing; a domain another account verified is Conflict (naming no account)."""
        rec, _ = await asyncio.to_thread(self.admin.add_domain, name, ident.account_name)
        return self._view(rec)

    async def remove_domain(self, ident: Identity, domain_id: str) -> None:
        """Conflict while aliases of the domain exist."""
        rec = await self._own_domain(ident, domain_id)
        await self.runner.write(self.admin.remove_claim, rec)
        self.invalidate()

    async def verify_domain(self, ident: Identity, domain_id: str) -> DomainView:
        """The verification TXT record (Invalid naming what was found), and a pending DKIM rotation;
        Conflict when another account verified the domain first."""
        rec = await self._own_domain(ident, domain_id)
        rec = await asyncio.to_thread(self.admin.verify_claim_and_keys, rec)
        self.invalidate()
        return self._view(rec)

    async def rotate_dkim(self, ident: Identity, domain_id: str) -> DomainView:
        rec = await self._own_domain(ident, domain_id)
        return self._view(await asyncio.to_thread(self.admin.rotate_claim, rec))

    # -- API keys -----------------------------------------------------------------------------------
    async def keys(self, ident: Identity) -> list[KeyRec]:
        return list(await self.runner.read(self.directory.list_api_keys, ident.account_name))

    async def create_key(self, ident: Identity, scopes: list[str], name: str | None) -> tuple[str, KeyRec]:
        """The whole key (shown once) and its record; Forbidden for a scope the calling key lacks."""
        created: tuple[str, KeyRec] = await self.runner.write(self.admin.create_key_for, ident.account_name, scopes,
                                                              ident.scopes, name)
        return created

    async def revoke_key(self, ident: Identity, key_id: str) -> None:
        await self.runner.write(self.admin.revoke_key, key_id, account_id=ident.account_id)
        self.invalidate()
