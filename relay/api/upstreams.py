"""``/api/v1/smtp-pools``: the upstream relays (Amazon SES, Mailgun, a Postfix smarthost...) that
deliver the mail of an IP pool. The seeds call an upstream relay an "SMTP pool"; the paths, the tag
and the field names are theirs.

Scope ``admin`` (an account's own upstreams, in its own IP pools) or ``operator`` (every upstream;
those it adds are the operator's). The dashboard's session routes of seed 001 (``/api/smtp-pools``:
the session cookie only, the seed's fields only) call the same handlers with the session's identity.
Another account's upstream answers 404. The password is stored encrypted and never returned
(``has_password`` says whether one is set). The rules are in :class:`relay.services.upstreams_api.UpstreamAdmin`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from relay.api.common import PREFIX, Body, Ok, check_id, errors, iso, line, refusals
from relay.api.deps import AdminKey, UpstreamsDep
from relay.api.session import AdminSession
from relay.store.directory import UpstreamRec
from relay.vocab import DEFAULT_IP_POOL

router = APIRouter(prefix=PREFIX, tags=["smtp-pools"])
session_router = APIRouter(prefix="/api", tags=["dashboard session"])
SEED_FIELDS = ("id", "name", "host", "port", "username", "encryption", "is_active", "created_at")
NOT_FOUND = "SMTP pool not found"
ENCRYPTION = Literal["tls", "ssl", "none"]


class PoolOut(BaseModel):
    """An SMTP pool (upstream relay). The password is never returned."""

    id: str
    name: str
    host: str
    port: int
    username: str | None = None
    encryption: str
    ip_pool: str
    owner: str = Field(description="'operator', or 'account' for an upstream of the caller's account")
    priority: int
    weight: int
    max_connections: int | None = None
    verify_tls: bool
    has_password: bool
    is_active: bool
    created_at: str


class SeedPool(BaseModel):
    """An SMTP pool as seed 001's session routes show it. The password is never returned."""

    id: str
    name: str
    host: str
    port: int
    username: str | None = None
    encryption: str
    is_active: bool
    created_at: str


class PoolTest(BaseModel):
    success: bool
    message: str
    latencyMs: int
    error: str | None = None


class PoolIn(Body):
    name: line(200, 1)
    host: line(253, 1)
    port: int = Field(ge=1, le=65535)
    username: line(400) | None = None
    password: line(1000) | None = None
    encryption: ENCRYPTION
    ip_pool: line(100) | None = Field(default=None, description=(
        f"IP pool it serves. Default: {DEFAULT_IP_POOL!r} for an operator key; for an account key, the "
        "account's own pool named after the account."))
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


def pool_json(u: UpstreamRec) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "host": u.host, "port": u.port, "username": u.username,
            "encryption": u.encryption, "ip_pool": u.ip_pool, "owner": "operator" if u.account_id is None else "account",
            "priority": u.priority, "weight": u.weight,
            "max_connections": u.max_connections, "verify_tls": u.verify_tls, "has_password": bool(u.password_enc),
            "is_active": u.is_active, "created_at": iso(u.created_at)}


@router.get("/smtp-pools", response_model=list[PoolOut], responses=errors())
async def list_upstreams(ident: AdminKey, upstreams: UpstreamsDep) -> list[dict[str, Any]]:
    """The account's SMTP pools (an operator key: every one), as in the seeds a bare array. Passwords are
    never included."""
    return [pool_json(u) for u in await upstreams.upstreams(ident)]


@router.post("/smtp-pools", response_model=PoolOut, responses=errors(403, 409))
async def create_upstream(body: PoolIn, ident: AdminKey, upstreams: UpstreamsDep) -> dict[str, Any]:
    """Create an SMTP pool of the caller's account (an operator key: of the operator); the password is
    stored encrypted and never returned."""
    with refusals():
        rec = await upstreams.add(ident, name=body.name, ip_pool=body.ip_pool, host=body.host, port=body.port,
                                  encryption=body.encryption, username=body.username, password=body.password,
                                  verify_tls=body.verify_tls, priority=body.priority, weight=body.weight,
                                  max_connections=body.max_connections, is_active=body.is_active)
    return pool_json(rec)


@router.get("/smtp-pools/{pool_id}", response_model=PoolOut, responses=errors(404))
async def get_upstream(pool_id: str, ident: AdminKey, upstreams: UpstreamsDep) -> dict[str, Any]:
    check_id(pool_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return pool_json(await upstreams.get(ident, pool_id))


@router.patch("/smtp-pools/{pool_id}", response_model=PoolOut, responses=errors(403, 404, 409))
async def update_upstream(pool_id: str, body: PoolPatch, ident: AdminKey, upstreams: UpstreamsDep) -> dict[str, Any]:
    check_id(pool_id, NOT_FOUND)
    changes = {f: getattr(body, f) for f in body.model_fields_set if f != "password"}
    with refusals(NOT_FOUND):
        return pool_json(await upstreams.update(ident, pool_id, body.password, changes))


@router.delete("/smtp-pools/{pool_id}", response_model=Ok, responses=errors(404))
async def delete_upstream(pool_id: str, ident: AdminKey, upstreams: UpstreamsDep) -> dict[str, Any]:
    check_id(pool_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        await upstreams.remove(ident, pool_id)
    return {"success": True}


@router.post("/smtp-pools/{pool_id}/test", response_model=PoolTest, responses=errors(404))
async def test_upstream(pool_id: str, ident: AdminKey, upstreams: UpstreamsDep) -> dict[str, Any]:
    """EHLO, TLS and AUTH against the relay, no mail: ``{success, message, latencyMs, error}``. A failure
    is classified (``refused``, ``timeout``, ``tls``, ``auth``, ``not_smtp``, ``not_allowed``,
    ``unreachable``); the peer's own words are never echoed."""
    check_id(pool_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return await upstreams.probe(ident, pool_id)


# -- seed 001's session routes: the dashboard's cookie, the same handlers ------------------------------
def _seed(pool: dict[str, Any]) -> dict[str, Any]:
    return {f: pool[f] for f in SEED_FIELDS}


@session_router.get("/smtp-pools", response_model=list[SeedPool], responses=errors())
async def session_list_upstreams(session: AdminSession, upstreams: UpstreamsDep) -> list[dict[str, Any]]:
    """The session's account's SMTP pools, a bare array (seed 001). Passwords are never included."""
    return [_seed(p) for p in await list_upstreams(session.identity, upstreams)]


@session_router.post("/smtp-pools", response_model=SeedPool, responses=errors(403, 409))
async def session_create_upstream(body: PoolIn, session: AdminSession, upstreams: UpstreamsDep) -> dict[str, Any]:
    return _seed(await create_upstream(body, session.identity, upstreams))


@session_router.patch("/smtp-pools/{pool_id}", response_model=SeedPool, responses=errors(403, 404, 409))
async def session_update_upstream(pool_id: str, body: PoolPatch, session: AdminSession,
                              upstreams: UpstreamsDep) -> dict[str, Any]:
    return _seed(await update_upstream(pool_id, body, session.identity, upstreams))


@session_router.delete("/smtp-pools/{pool_id}", response_model=Ok, responses=errors(404))
async def session_delete_upstream(pool_id: str, session: AdminSession, upstreams: UpstreamsDep) -> dict[str, Any]:
    return await delete_upstream(pool_id, session.identity, upstreams)


@session_router.post("/smtp-pools/{pool_id}/test", response_model=PoolTest, responses=errors(404))
async def session_test_upstream(pool_id: str, session: AdminSession, upstreams: UpstreamsDep) -> dict[str, Any]:
    """EHLO, TLS and AUTH against the relay, no mail: ``{success, message, latencyMs, error}``."""
    return await test_upstream(pool_id, session.identity, upstreams)
