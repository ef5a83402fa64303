"""``/api/v1/keys``: the account's API keys. Scope ``admin``.

A key is shown whole once, in the answer that creates it, and stored only as a hash; a new key
cannot hold a scope the calling key lacks. The rules are in
:class:`relay.services.directory_api.AccountDirectory` (and :class:`relay.services.admin.Admin`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from relay.api.common import PREFIX, Body, Ok, check_id, errors, iso, line, refusals
from relay.api.deps import AdminKey, DirectoryDep
from relay.store.directory import KeyRec

router = APIRouter(prefix=PREFIX, tags=["keys"])
NOT_FOUND = "API key not found"


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


class KeyIn(Body):
    scopes: list[line(40, 1)] = Field(min_length=1, max_length=10)
    name: line(200) | None = None


def key_json(k: KeyRec) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "scopes": sorted(k.scopes), "created_at": iso(k.created_at),
            "revoked": k.revoked}


@router.get("/keys", response_model=KeyList, responses=errors())
async def list_keys(ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """The account's keys (ids and scopes; a key itself is shown only when created)."""
    return {"success": True, "keys": [key_json(k) for k in await directory.keys(ident)]}


@router.post("/keys", response_model=KeyOne, responses=errors())
async def create_key(body: KeyIn, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """A new key for the account, shown once. It cannot hold a scope the calling key lacks (403)."""
    with refusals():
        full, rec = await directory.create_key(ident, list(body.scopes), body.name)
    return {"success": True, "api_key": {**key_json(rec), "key": full}}


@router.delete("/keys/{key_id}", response_model=Ok, responses=errors(404))
async def delete_key(key_id: str, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """Revoke a key of the account (at once on this node, within seconds on the others)."""
    check_id(key_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        await directory.revoke_key(ident, key_id)
    return {"success": True}
