"""``/api/v1/suppressions``: the account's suppression list. Scope ``admin``.

The rules (the address check, lower case, UTC expiry, the ``complained`` event) are in
:class:`relay.services.suppressions.SuppressionList`; the list is kept by the enabled policy that
provides one (the built-in ``suppression`` policy). With none enabled, every route answers ``501``
``{"success": false, "error": "suppression policy is not enabled"}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from relay.api.common import (
    PREFIX,
    Body,
    Ok,
    check_id,
    errors,
    iso,
    line,
    refusals,
    text,
)
from relay.api.deps import AdminKey, SuppressionsDep
from relay.services.suppressions import REASONS, SuppressionEntry

router = APIRouter(prefix=PREFIX, tags=["suppressions"])
NOT_FOUND = "Suppression not found"
NOT_ENABLED = 501  # no enabled policy provides the suppression list (relay.vocab.NotEnabled)
Reason = Literal[REASONS]  # type: ignore[valid-type]


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


class SuppressionIn(Body):
    email: line(320)
    reason: Reason = "manual"
    detail: text(1000) | None = None
    expires_at: dt.datetime | None = None


def suppression_json(r: SuppressionEntry) -> dict[str, Any]:
    return {"email": r.address, "reason": r.reason, "detail": r.detail, "expires_at": iso(r.expires_at),
            "created_at": iso(r.created_at)}


@router.get("/suppressions", response_model=SuppressionList, responses=errors(NOT_ENABLED))
async def list_suppressions(ident: AdminKey, suppressions: SuppressionsDep, reason: Reason | None = None,
                            limit: int = Query(default=1000, ge=1, le=10000)) -> dict[str, Any]:
    with refusals():
        recs = await suppressions.entries(ident.account_id, reason=reason, limit=limit)
    return {"success": True, "suppressions": [suppression_json(x) for x in recs]}


@router.post("/suppressions", response_model=SuppressionOne, responses=errors(NOT_ENABLED))
async def add_suppression(body: SuppressionIn, ident: AdminKey, suppressions: SuppressionsDep) -> dict[str, Any]:
    """Add (or update) an address; a ``complaint`` also sends the ``complained`` webhook event."""
    with refusals():
        rec = await suppressions.add(ident.account_id, body.email, body.reason, body.detail, body.expires_at)
    return {"success": True, "suppression": suppression_json(rec) if rec else None}


@router.delete("/suppressions/{email}", response_model=Ok, responses=errors(404, NOT_ENABLED))
async def delete_suppression(email: str, ident: AdminKey, suppressions: SuppressionsDep) -> dict[str, Any]:
    """Take an address off the list (it can be sent to again)."""
    check_id(email, NOT_FOUND)
    with refusals(NOT_FOUND):
        await suppressions.remove(ident.account_id, email)
    return {"success": True}


@router.delete("/suppressions", response_model=Ok, responses=errors(404, NOT_ENABLED))
async def delete_suppression_by_query(ident: AdminKey, suppressions: SuppressionsDep,
                                      email: str = Query(max_length=320)) -> dict[str, Any]:
    """The same as ``DELETE /suppressions/{email}``, for clients that address the collection."""
    return await delete_suppression(email, ident, suppressions)
