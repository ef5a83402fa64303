"""``/api/v1/aliases``: the account's sending aliases, and the verification link of a new one.

Scope ``aliases`` (or ``admin``). The rules (verified domain, the last verified alias, queued mail
still using one, tenancy) are in :class:`relay.services.directory_api.AccountDirectory`.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from relay.api.common import PREFIX, Body, Ok, check_id, errors, iso, line, refusals
from relay.api.deps import AliasesKey, DirectoryDep
from relay.store.directory import AliasRec
from relay.vocab import DEFAULT_IP_POOL
from relay.vocab import Expired, NotFound

router = APIRouter(prefix=PREFIX, tags=["aliases"])
verify_router = APIRouter(prefix=PREFIX)  # the HTML link in the verification email, outside the JSON API
NOT_FOUND = "Alias not found"


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
    warning: str | None = Field(default=None, description="Why the verification email cannot go out yet")


class AliasIn(Body):
    email: line(320)
    name: line(200) | None = None
    is_default: bool = False
    ip_pool: line(100) = Field(default=DEFAULT_IP_POOL)


class AliasPatch(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: line(200) | None = None
    is_default: bool | None = None
    ip_pool: line(100) | None = None


def alias_json(a: AliasRec) -> dict[str, Any]:
    return {"id": a.id, "email": a.email, "name": a.name, "is_default": a.is_default, "is_verified": a.verified,
            "ip_pool": a.ip_pool, "created_at": iso(a.created_at)}


@router.get("/aliases", response_model=AliasList, responses=errors())
async def list_aliases(ident: AliasesKey, directory: DirectoryDep) -> dict[str, Any]:
    """List the account's sending aliases."""
    return {"success": True, "aliases": [alias_json(a) for a in await directory.aliases(ident)]}


@router.post("/aliases", response_model=AliasOne, responses=errors(409))
async def create_alias(body: AliasIn, ident: AliasesKey, directory: DirectoryDep) -> dict[str, Any]:
    """Create an alias on a verified domain of the account; its verification email goes out now."""
    with refusals():
        alias, warning = await directory.add_alias(ident, body.email, ip_pool=body.ip_pool, name=body.name,
                                                   is_default=body.is_default)
    out: dict[str, Any] = {"success": True, "alias": alias_json(alias)}
    if warning:
        out["warning"] = warning
    return out


@router.get("/aliases/{alias_id}", response_model=AliasOne, responses=errors(404))
async def get_alias(alias_id: str, ident: AliasesKey, directory: DirectoryDep) -> dict[str, Any]:
    check_id(alias_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        return {"success": True, "alias": alias_json(await directory.alias(ident, alias_id))}


@router.patch("/aliases/{alias_id}", response_model=AliasOne, responses=errors(404))
async def update_alias(alias_id: str, body: AliasPatch, ident: AliasesKey, directory: DirectoryDep) -> dict[str, Any]:
    """Only ``name``, ``is_default`` and ``ip_pool`` change after creation."""
    check_id(alias_id, NOT_FOUND)
    changes = {f: getattr(body, f) for f in body.model_fields_set}
    with refusals(NOT_FOUND):
        alias = await directory.update_alias(ident, alias_id, changes, unknown=list(body.model_extra or ()))
    return {"success": True, "alias": alias_json(alias)}


@router.delete("/aliases/{alias_id}", response_model=Ok, responses=errors(404, 409))
async def delete_alias(alias_id: str, ident: AliasesKey, directory: DirectoryDep) -> dict[str, Any]:
    """409 while queued mail still uses the alias; 403 for the account's only verified alias."""
    check_id(alias_id, NOT_FOUND)
    with refusals(NOT_FOUND):
        await directory.remove_alias(ident, alias_id)
    return {"success": True}


# -- the verification link: a GET shows a page (mail scanners open links), its button POSTs ------------------
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}}
button{{font:inherit;padding:.5em 1.5em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
# no script, no outside resource; the form posts to this very URL (no action attribute). same-origin, not
# no-referrer: with no-referrer a browser sends "Origin: null" on the POST, and the app-wide origin check
# (relay.api.csrf) refuses it when the same browser has a dashboard session (found by the browser test)
# and never in a frame: a page that framed it could have its one button clicked by a decoy (clickjacking)
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                       "frame-ancestors 'none'; base-uri 'none'"}
NOT_VALID = ("This verification link is not valid", "<p>It may have been used already. Links work once.</p>")
EXPIRED = ("This verification link has expired",
           "<p>Nothing was verified. Ask for a new verification email (or ask the gateway's operator).</p>")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status, headers=_HEADERS)


async def _refused(call: Awaitable[AliasRec]) -> AliasRec | HTMLResponse:
    try:
        return await call
    except NotFound:
        return _page(*NOT_VALID, status=404)
    except Expired:
        return _page(*EXPIRED, status=410)


@verify_router.get("/aliases/verify/{token}", response_class=HTMLResponse)
async def verification_page(token: str, directory: DirectoryDep) -> HTMLResponse:
    """The link in the verification email: a page whose button verifies. Opening it changes nothing."""
    alias = await _refused(directory.verification_link(token))
    if isinstance(alias, HTMLResponse):
        return alias
    email = html.escape(alias.email)
    return _page(f"Verify {alias.email}",
                 f"<p>Confirm that <strong>{email}</strong> may send mail through Relay.</p>"
                 f'<form method="post"><button type="submit">Verify {email}</button></form>')


@verify_router.post("/aliases/verify/{token}", response_class=HTMLResponse)
async def verify_alias(token: str, directory: DirectoryDep) -> HTMLResponse:
    """The page's button: verifies the alias (once, within ``aliases.verify_link_ttl`` of sending)."""
    alias = await _refused(directory.verify_alias(token))
    if isinstance(alias, HTMLResponse):
        return alias
    return _page(f"{alias.email} is verified", "<p>It can now send through Relay.</p>")
