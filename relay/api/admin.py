"""Management routes: aliases, SMTP pools, domains (and DKIM rotation), suppressions, API keys, usage.

Each route checks the key's scope, calls the shared admin operations (:mod:`relay.services.admin`, the rules
live there, once) in a store thread, and maps their refusals through
:func:`relay.api.common.admin_error`. Scopes: ``aliases`` (or ``admin``) for aliases; ``admin`` for
the rest; ``usage`` answers any valid key. Everything is limited to the key's own account, except
SMTP pools (upstream relays), which serve the whole gateway. No response ever holds a password, a
DKIM private key or a whole API key (except a new key, once, in the answer that creates it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from relay.events import webhooks
from relay.api.common import (PREFIX, ApiError, Body, Ok, admin_error, authenticated, check_id, errors, field_error,
                              iso, line, text)
from relay.submission.compose import check_address
from relay.vocab import Conflict, Forbidden, Invalid, NotFound
from relay.submission.pipeline import DEFAULT_POOL, Identity
from relay.store.directory import AliasRec, DomainRec, KeyRec, UpstreamRec

ENCRYPTION = Literal["tls", "ssl", "none"]
ADMIN_ERRORS = (Conflict, Forbidden, Invalid, NotFound)


# -- response shapes (documentation; the routes build plain dicts) -----------------------------------
class AliasOut(BaseModel):
    id: str
    email: str
    name: str | None = None
    is_default: bool
    is_verified: bool
    ip_pool: str
    created_at: str


class AliasList(BaseModel):
    success: bool
    aliases: list[AliasOut]


class AliasOne(BaseModel):
    success: bool
    alias: AliasOut


class PoolOut(BaseModel):
    """An SMTP pool (upstream relay). The password is never returned."""

    id: str
    name: str
    host: str
    port: int
    username: str | None = None
    encryption: str
    ip_pool: str
    priority: int
    weight: int
    max_connections: int | None = None
    verify_tls: bool
    has_password: bool
    is_active: bool
    created_at: str


class PoolTest(BaseModel):
    success: bool
    message: str
    latencyMs: int
    error: str | None = None


class DnsRecordOut(BaseModel):
    type: str
    name: str
    value: str
    purpose: str


class DkimOut(BaseModel):
    selector: str
    algorithm: str
    status: str
    retire_at: str | None = None


class DomainOut(BaseModel):
    id: str
    domain: str
    is_verified: bool
    created_at: str
    dkim: list[DkimOut]
    records: list[DnsRecordOut]


class DomainList(BaseModel):
    success: bool
    domains: list[DomainOut]


class DomainOne(BaseModel):
    success: bool
    domain: DomainOut


class SuppressionOut(BaseModel):
    email: str
    reason: str
    detail: str | None = None
    expires_at: str | None = None
    created_at: str


class SuppressionList(BaseModel):
    success: bool
    suppressions: list[SuppressionOut]


class SuppressionOne(BaseModel):
    success: bool
    suppression: SuppressionOut


class KeyOut(BaseModel):
    id: str
    name: str | None = None
    scopes: list[str]
    created_at: str
    revoked: bool


class NewKeyOut(KeyOut):
    key: str = Field(description="The whole API key: shown here once, stored only as a hash")


class KeyList(BaseModel):
    success: bool
    keys: list[KeyOut]


class KeyOne(BaseModel):
    success: bool
    api_key: NewKeyOut


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    success: bool
    day: str
    enforced: bool
    sent_today: dict[str, int]
    limits: list[dict[str, Any]]


# -- request bodies -----------------------------------------------------------------------------------
class AliasIn(Body):
    email: line(320)
    name: line(200) | None = None
    is_default: bool = False
    ip_pool: line(100) = Field(default=DEFAULT_POOL)


class AliasPatch(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: line(200) | None = None
    is_default: bool | None = None
    ip_pool: line(100) | None = None


class PoolIn(Body):
    name: line(200, 1)
    host: line(253, 1)
    port: int = Field(ge=1, le=65535)
    username: line(400) | None = None
    password: line(1000) | None = None
    encryption: ENCRYPTION
    ip_pool: line(100) = Field(default=DEFAULT_POOL)
    priority: int = Field(default=0, ge=-1000, le=1000)
    weight: int = Field(default=1, ge=1, le=1000)
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    verify_tls: bool | None = None
    is_active: bool = True


class PoolPatch(Body):
    name: line(200, 1) | None = None
    host: line(253, 1) | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    username: line(400) | None = None
    password: line(1000) | None = None
    encryption: ENCRYPTION | None = None
    ip_pool: line(100) | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    weight: int | None = Field(default=None, ge=1, le=1000)
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    verify_tls: bool | None = None
    is_active: bool | None = None


class DomainIn(Body):
    domain: line(253)


class SuppressionIn(Body):
    email: line(320)
    reason: Literal["hard_bounce", "complaint", "unsubscribe", "manual"] = "manual"
    detail: text(1000) | None = None
    expires_at: dt.datetime | None = None


class KeyIn(Body):
    scopes: list[line(40, 1)] = Field(min_length=1, max_length=10)
    name: line(200) | None = None


# -- rendering ----------------------------------------------------------------------------------------
def alias_json(a: AliasRec) -> dict[str, Any]:
    return {"id": a.id, "email": a.email, "name": a.name, "is_default": a.is_default, "is_verified": a.verified,
            "ip_pool": a.ip_pool, "created_at": iso(a.created_at)}


def pool_json(u: UpstreamRec) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "host": u.host, "port": u.port, "username": u.username,
            "encryption": u.encryption, "ip_pool": u.ip_pool, "priority": u.priority, "weight": u.weight,
            "max_connections": u.max_connections, "verify_tls": u.verify_tls, "has_password": bool(u.password_enc),
            "is_active": u.is_active, "created_at": iso(u.created_at)}


def domain_json(d: DomainRec, records: list[Any]) -> dict[str, Any]:
    return {"id": d.id, "domain": d.name, "is_verified": d.verified, "created_at": iso(d.created_at),
            "dkim": [{"selector": k.selector, "algorithm": k.algorithm, "status": k.status,
                      "retire_at": iso(k.retire_at)} for k in d.keys],
            "records": [{"type": r.type, "name": r.name, "value": r.value, "purpose": r.purpose} for r in records]}


def suppression_json(r: Any) -> dict[str, Any]:
    return {"email": r.address, "reason": r.reason, "detail": r.detail, "expires_at": iso(r.expires_at),
            "created_at": iso(r.created_at)}


def key_json(k: KeyRec) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "scopes": sorted(k.scopes), "created_at": iso(k.created_at),
            "revoked": k.revoked}


def router(gateway: Any) -> APIRouter:
    r = APIRouter(prefix=PREFIX)
    admin = gateway.admin
    directory = gateway.store.directory
    runner = gateway.runner
    aliases_scope = Depends(authenticated(gateway, "aliases", "admin"))
    admin_scope = Depends(authenticated(gateway, "admin"))
    any_key = Depends(authenticated(gateway))

    async def call(fn: Any, *args: Any, not_found: str = "Not found", thread: bool = False, **kw: Any) -> Any:
        """An admin operation in a store thread (``thread``: a slow one - key generation, DNS - in
        its own thread, so it never holds up the store writer), its refusals mapped once."""
        try:
            if thread:
                return await asyncio.to_thread(fn, *args, **kw)
            return await runner.write(fn, *args, **kw)
        except ADMIN_ERRORS as exc:
            raise admin_error(exc, not_found) from None

    def changed() -> None:
        gateway.pipeline.invalidate()

    # -- aliases ------------------------------------------------------------------------------------
    async def own_alias(ident: Identity, alias_id: str) -> AliasRec:
        check_id(alias_id, "Alias not found")
        try:
            alias = await runner.read(directory.get_alias, alias_id)
        except NotFound:
            raise ApiError(404, "Alias not found") from None
        if alias.id != alias_id or alias.account_id != ident.account_id:
            raise ApiError(404, "Alias not found")
        return alias

    @r.get("/aliases", tags=["aliases"], response_model=AliasList, responses=errors())
    async def list_aliases(ident: Identity = aliases_scope) -> dict[str, Any]:
        """List the account's sending aliases."""
        return {"success": True, "aliases": [alias_json(a) for a in
                                             await runner.read(directory.list_aliases, ident.account_name)]}

    @r.post("/aliases", tags=["aliases"], response_model=AliasOne, responses=errors(409))
    async def create_alias(body: AliasIn, ident: Identity = aliases_scope) -> dict[str, Any]:
        """Create an alias on a verified domain of the account; its verification email goes out now."""
        alias, _ = await call(admin.add_alias, body.email, account=ident.account_name, ip_pool=body.ip_pool,
                              name=body.name, is_default=body.is_default)
        changed()
        return {"success": True, "alias": alias_json(alias)}

    @r.get("/aliases/{alias_id}", tags=["aliases"], response_model=AliasOne, responses=errors(404))
    async def get_alias(alias_id: str, ident: Identity = aliases_scope) -> dict[str, Any]:
        return {"success": True, "alias": alias_json(await own_alias(ident, alias_id))}

    @r.patch("/aliases/{alias_id}", tags=["aliases"], response_model=AliasOne, responses=errors(404))
    async def update_alias(alias_id: str, body: AliasPatch, ident: Identity = aliases_scope) -> dict[str, Any]:
        """Only ``name``, ``is_default`` and ``ip_pool`` change after creation."""
        alias = await own_alias(ident, alias_id)
        if body.model_extra:
            field = sorted(body.model_extra)[0]
            raise field_error(field, "Only name, is_default and ip_pool can be changed after creation")
        changes = {f: getattr(body, f) for f in body.model_fields_set}
        updated = await call(admin.update_alias, alias, not_found="Alias not found", **changes)
        changed()
        return {"success": True, "alias": alias_json(updated)}

    @r.delete("/aliases/{alias_id}", tags=["aliases"], response_model=Ok, responses=errors(404, 409))
    async def delete_alias(alias_id: str, ident: Identity = aliases_scope) -> dict[str, Any]:
        """409 while queued mail still uses the alias; 403 for the account's only verified alias."""
        alias = await own_alias(ident, alias_id)
        await call(admin.remove_alias_checked, alias, not_found="Alias not found")
        changed()
        return {"success": True}

    # -- SMTP pools (upstream relays) ----------------------------------------------------------------
    async def reload_upstreams() -> None:
        gateway.load_upstreams(await runner.read(directory.list_upstreams))

    async def pool(pool_id: str) -> UpstreamRec:
        check_id(pool_id, "SMTP pool not found")
        try:
            rec = await runner.read(directory.get_upstream, pool_id)
        except NotFound:
            raise ApiError(404, "SMTP pool not found") from None
        if rec.id != pool_id:
            raise ApiError(404, "SMTP pool not found")
        return rec

    @r.get("/smtp-pools", tags=["smtp-pools"], response_model=list[PoolOut], responses=errors())
    async def list_pools(_: Identity = admin_scope) -> list[dict[str, Any]]:
        """Every SMTP pool of the gateway (as in the seeds: a bare array). Passwords are never included."""
        return [pool_json(u) for u in await runner.read(directory.list_upstreams)]

    @r.post("/smtp-pools", tags=["smtp-pools"], response_model=PoolOut, responses=errors(409))
    async def create_pool(body: PoolIn, _: Identity = admin_scope) -> dict[str, Any]:
        """Create an SMTP pool; the password is stored encrypted and never returned."""
        rec = await call(admin.add_upstream, name=body.name, ip_pool=body.ip_pool, host=body.host, port=body.port,
                         encryption=body.encryption, username=body.username, password=body.password,
                         verify_tls=body.verify_tls, priority=body.priority, weight=body.weight,
                         max_connections=body.max_connections)
        if not body.is_active:
            rec = await call(directory.update_upstream, rec.id, is_active=False)
        await reload_upstreams()
        return pool_json(rec)

    @r.get("/smtp-pools/{pool_id}", tags=["smtp-pools"], response_model=PoolOut, responses=errors(404))
    async def get_pool(pool_id: str, _: Identity = admin_scope) -> dict[str, Any]:
        return pool_json(await pool(pool_id))

    @r.patch("/smtp-pools/{pool_id}", tags=["smtp-pools"], response_model=PoolOut, responses=errors(404, 409))
    async def update_pool(pool_id: str, body: PoolPatch, _: Identity = admin_scope) -> dict[str, Any]:
        rec = await pool(pool_id)
        changes = {f: getattr(body, f) for f in body.model_fields_set if f != "password"}
        for f in ("name", "host", "port", "encryption", "ip_pool", "priority", "weight", "verify_tls", "is_active"):
            if f in changes and changes[f] is None:
                raise field_error(f, "must not be null")
        updated = await call(admin.update_upstream, rec, password=body.password, not_found="SMTP pool not found",
                             **changes)
        await reload_upstreams()
        return pool_json(updated)

    @r.delete("/smtp-pools/{pool_id}", tags=["smtp-pools"], response_model=Ok, responses=errors(404))
    async def delete_pool(pool_id: str, _: Identity = admin_scope) -> dict[str, Any]:
        rec = await pool(pool_id)
        await call(directory.remove_upstream, rec.id, not_found="SMTP pool not found")
        await reload_upstreams()
        return {"success": True}

    @r.post("/smtp-pools/{pool_id}/test", tags=["smtp-pools"], response_model=PoolTest, responses=errors(404))
    async def test_pool(pool_id: str, _: Identity = admin_scope) -> dict[str, Any]:
        """EHLO, TLS and AUTH against the relay, no mail: ``{success, message, latencyMs, error}``."""
        from relay.delivery.upstream import Upstream, UpstreamConfig

        rec = await pool(pool_id)
        d = gateway.settings.delivery
        up = Upstream(UpstreamConfig(id=rec.id, name=rec.name, host=rec.host, port=rec.port, encryption=rec.encryption,
                                     username=rec.username, password=admin.upstream_password(rec),
                                     verify_tls=rec.verify_tls, max_connections=1),
                      local_hostname=gateway.settings.hostname, connect_timeout=d.connect_timeout,
                      command_timeout=d.command_timeout)
        return await up.probe()

    # -- domains --------------------------------------------------------------------------------------
    async def own_domain(ident: Identity, domain_id: str) -> DomainRec:
        check_id(domain_id, "Domain not found")
        try:
            rec = await runner.read(directory.get_domain_by_id, domain_id)
        except NotFound:
            raise ApiError(404, "Domain not found") from None
        if rec.account_id != ident.account_id:
            raise ApiError(404, "Domain not found")
        return rec

    def domain_out(rec: DomainRec) -> dict[str, Any]:
        return domain_json(rec, admin.dns_records(rec))

    @r.get("/domains", tags=["domains"], response_model=DomainList, responses=errors())
    async def list_domains(ident: Identity = admin_scope) -> dict[str, Any]:
        """The account's domains, each with the DNS records to publish (DKIM per selector,
        verification TXT, SPF hint). Private keys never leave the store."""
        recs = await runner.read(directory.list_domains, ident.account_name)
        return {"success": True, "domains": [domain_out(d) for d in recs]}

    @r.post("/domains", tags=["domains"], response_model=DomainOne, responses=errors(409))
    async def create_domain(body: DomainIn, ident: Identity = admin_scope) -> dict[str, Any]:
        """Register a domain with fresh RSA-2048 and Ed25519 DKIM keys; publish the records, then verify."""
        rec, _ = await call(admin.add_domain, body.domain, ident.account_name, thread=True)
        return {"success": True, "domain": domain_out(rec)}

    @r.get("/domains/{domain_id}", tags=["domains"], response_model=DomainOne, responses=errors(404))
    async def get_domain(domain_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        return {"success": True, "domain": domain_out(await own_domain(ident, domain_id))}

    @r.delete("/domains/{domain_id}", tags=["domains"], response_model=Ok, responses=errors(404, 409))
    async def delete_domain(domain_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """409 while aliases of the domain exist."""
        rec = await own_domain(ident, domain_id)
        await call(directory.remove_domain, rec.name, not_found="Domain not found")
        changed()
        return {"success": True}

    @r.post("/domains/{domain_id}/verify", tags=["domains"], response_model=DomainOne, responses=errors(404))
    async def verify_domain(domain_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """Check the verification TXT record (400 naming what was found when it is not there yet);
        a pending DKIM rotation is checked too."""
        rec = await own_domain(ident, domain_id)
        await call(admin.verify_domain, rec.name, thread=True, not_found="Domain not found")
        rec = await call(admin.check_dkim_rotation, rec.name, thread=True, not_found="Domain not found")
        changed()
        return {"success": True, "domain": domain_out(rec)}

    @r.post("/domains/{domain_id}/dkim/rotate", tags=["domains"], response_model=DomainOne, responses=errors(404))
    async def rotate_dkim(domain_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """Publish new DKIM selectors (``status: pending``). Signing switches to them once their TXT
        records are seen in DNS (checked every minute, and by ``verify``); the old keys then stay
        published (``retiring``) for a grace period of 7 days."""
        rec = await own_domain(ident, domain_id)
        rec = await call(admin.rotate_dkim, rec.name, thread=True, not_found="Domain not found")
        return {"success": True, "domain": domain_out(rec)}

    # -- suppressions ---------------------------------------------------------------------------------
    def suppressions() -> Any:
        from relay.store.suppressions import Suppressions

        return Suppressions(gateway.store.sessions, gateway.store.reads)

    @r.get("/suppressions", tags=["suppressions"], response_model=SuppressionList, responses=errors())
    async def list_suppressions(ident: Identity = admin_scope,
                                reason: Literal["hard_bounce", "complaint", "unsubscribe", "manual"] | None = None,
                                limit: int = Query(default=1000, ge=1, le=10000)) -> dict[str, Any]:
        recs = await runner.read(suppressions().list, ident.account_id, reason=reason, limit=limit)
        return {"success": True, "suppressions": [suppression_json(x) for x in recs]}

    @r.post("/suppressions", tags=["suppressions"], response_model=SuppressionOne, responses=errors())
    async def add_suppression(body: SuppressionIn, ident: Identity = admin_scope) -> dict[str, Any]:
        """Add (or update) an address; a ``complaint`` also sends the ``complained`` webhook event."""
        from relay.store.suppressions import NewSuppression

        try:
            email = check_address(body.email, "email").lower()
        except ValueError as exc:
            raise field_error("email", str(exc)) from None
        expires = body.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.timezone.utc)
        store = suppressions()
        await runner.write(store.add, ident.account_id, [NewSuppression(email, body.reason, body.detail, expires)])
        rec = await runner.read(store.lookup, ident.account_id, email, dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        if body.reason == "complaint":
            await webhooks.service(gateway).emit(ident.account_id, "complained",
                                                 [{"recipient": email, "detail": body.detail}])
        return {"success": True, "suppression": suppression_json(rec)}

    @r.delete("/suppressions/{email}", tags=["suppressions"], response_model=Ok, responses=errors(404))
    async def delete_suppression(email: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """Take an address off the list (it can be sent to again)."""
        check_id(email, "Suppression not found")
        await call(suppressions().remove, ident.account_id, [email], not_found="Suppression not found")
        return {"success": True}

    @r.delete("/suppressions", tags=["suppressions"], response_model=Ok, responses=errors(404))
    async def delete_suppression_by_query(email: str = Query(max_length=320),
                                          ident: Identity = admin_scope) -> dict[str, Any]:
        """The same as ``DELETE /suppressions/{email}``, for clients that address the collection."""
        return await delete_suppression(email, ident)

    # -- API keys -------------------------------------------------------------------------------------
    @r.get("/keys", tags=["keys"], response_model=KeyList, responses=errors())
    async def list_keys(ident: Identity = admin_scope) -> dict[str, Any]:
        """The account's keys (ids and scopes; a key itself is shown only when created)."""
        return {"success": True, "keys": [key_json(k) for k in
                                          await runner.read(directory.list_api_keys, ident.account_name)]}

    @r.post("/keys", tags=["keys"], response_model=KeyOne, responses=errors())
    async def create_key(body: KeyIn, ident: Identity = admin_scope) -> dict[str, Any]:
        """A new key for the account, shown once. It cannot hold a scope the calling key lacks (403)."""
        full, rec = await call(admin.create_key_for, ident.account_name, list(body.scopes), ident.scopes, body.name)
        return {"success": True, "api_key": {**key_json(rec), "key": full}}

    @r.delete("/keys/{key_id}", tags=["keys"], response_model=Ok, responses=errors(404))
    async def delete_key(key_id: str, ident: Identity = admin_scope) -> dict[str, Any]:
        """Revoke a key of the account (at once on this node, within seconds on the others)."""
        check_id(key_id, "API key not found")
        rec = await runner.read(directory.find_api_key, key_id)
        if rec is None or rec.account_id != ident.account_id:
            raise ApiError(404, "API key not found")
        await call(directory.revoke_api_key, key_id, not_found="API key not found")
        changed()
        return {"success": True}

    # -- usage ----------------------------------------------------------------------------------------
    @r.get("/usage", tags=["usage"], response_model=Usage, responses=errors())
    async def usage(ident: Identity = any_key) -> dict[str, Any]:
        """Today's sends against the account's quotas and its pools' warm-up caps."""
        from relay.services.usage import account_usage

        acc = await runner.read(directory.get_account_by_id, ident.account_id)
        return {"success": True, **await runner.read(account_usage, gateway.store, gateway.settings, acc)}

    return r

