"""``/api/v1/domains``: the account's sending domains, their DNS records and DKIM key rotation.

Scope ``admin``. Private keys never leave the store. The rules are in
:class:`relay.services.directory_api.AccountDirectory` (and :class:`relay.services.admin.Admin`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from relay.api.common import PREFIX, Body, Ok, check_id, errors, iso, line, refusals
from relay.api.deps import AdminKey, DirectoryDep
from relay.services.directory_api import DomainView

router = APIRouter(prefix=PREFIX, tags=["domains"])
NOT_FOUND = "Domain not found"


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


class DomainIn(Body):
    domain: line(253)


def domain_json(view: DomainView) -> dict[str, Any]:
    d, records = view
    return {"id": d.id, "domain": d.name, "is_verified": d.verified, "created_at": iso(d.created_at),
            "dkim": [{"selector": k.selector, "algorithm": k.algorithm, "status": k.status,
                      "retire_at": iso(k.retire_at)} for k in d.keys],
            "records": [{"type": r.type, "name": r.name, "value": r.value, "purpose": r.purpose} for r in records]}


def _one(view: DomainView) -> dict[str, Any]:
    return {"success": True, "domain": domain_json(view)}


@router.get("/domains", response_model=DomainList, responses=errors())
async def list_domains(ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """The account's domains, each with the DNS records to publish (DKIM per selector,
    verification TXT, SPF hint). Private keys never leave the store."""
    return {"success": True, "domains": [domain_json(v) for v in await directory.domains(ident)]}


@router.post("/domains", response_model=DomainOne, responses=errors(409))
async def create_domain(body: DomainIn, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """Claim a domain, with fresh RSA-2048 and Ed25519 DKIM keys; publish the records, then verify.
    Several accounts may claim one domain: the first to verify it owns it. 409 for a domain the
    account claimed already, or one another account verified."""
    with refusals():
        return _one(await directory.add_domain(ident, body.domain))


@router.get("/domains/{domain_id}", response_model=DomainOne, responses=errors(404))
async def get_domain(domain_id: str, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    check_id(domain_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return _one(await directory.domain(ident, domain_id))


@router.delete("/domains/{domain_id}", response_model=Ok, responses=errors(404, 409))
async def delete_domain(domain_id: str, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """409 while aliases of the domain exist."""
    check_id(domain_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        await directory.remove_domain(ident, domain_id)
    return {"success": True}


@router.post("/domains/{domain_id}/verify", response_model=DomainOne, responses=errors(404, 409))
async def verify_domain(domain_id: str, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """Check the verification TXT record (400 naming what was found when it is not there yet);
    a pending DKIM rotation is checked too. 409 when another account verified the domain first."""
    check_id(domain_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return _one(await directory.verify_domain(ident, domain_id))


@router.post("/domains/{domain_id}/dkim/rotate", response_model=DomainOne, responses=errors(404))
async def rotate_dkim(domain_id: str, ident: AdminKey, directory: DirectoryDep) -> dict[str, Any]:
    """Publish new DKIM selectors (``status: pending``). Signing switches to them once their TXT
    records are seen in DNS (checked every minute, and by ``verify``); the old keys then stay
    published (``retiring``) for a grace period of 7 days."""
    check_id(domain_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return _one(await directory.rotate_dkim(ident, domain_id))
