"""Tenant isolation, generated from the OpenAPI route list: a second account's keys, one per scope, and
its dashboard sessions (a member's and an admin's cookie) go through EVERY route of ``/api/v1`` and the
session routes (``/api/smtp-pools``...) with the first account's objects in the path. Each answer must be
403 or 404, and afterwards the first account sees exactly what it saw before (routes without an
object in the path included: a bulk delete or a list must not reach across accounts, and a list
must not show the first account's ids). A new route is covered without editing this test; a route
whose path names a new kind of object fails below until that kind gets a victim object."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from relay.services.admin import CLI_ONLY_SCOPES, SCOPES
from tests.conftest import provision, wait_for
from tests.support.api import Api, send_body, start_api
from tests.support.sessions import as_user

ATTACKER_SCOPES = [s for s in SCOPES if s not in CLI_ONLY_SCOPES]
CAPABILITY_PARAMS = {"token"}  # /aliases/verify/{token}: the unguessable link itself is the credential
OWN_SESSION = {"/api/auth/login", "/api/auth/logout"}  # act on the caller's own session only
SESSION_ROLES = ("member", "admin")
# free from loopback by design (the operator's own host; elsewhere an operator key): the test's clients
# are on loopback, and the upstream gauges name acme's pool once the periodic reload (10 s) saw it
LOOPBACK_OPERATOR_VIEWS = {"/metrics"}
SAMPLES = {"string": "attacker", "integer": 2, "number": 2, "boolean": False}


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [_resolve(doc, s) for s in schema[key] if s.get("type") != "null"]
            return options[0] if options else {"type": "null"}
    return schema


def sample(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A small valid value of ``schema``: what a client would send (every required field; for a body
    with none required, as a PATCH, one simple optional field)."""
    schema = _resolve(doc, schema)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "array":
        return [sample(doc, schema.get("items", {"type": "string"}))]
    if kind != "object":
        value = SAMPLES.get(kind, "attacker")
        if kind == "string" and schema.get("format") == "email":
            value = "attacker@globex.test"
        return max(value, schema.get("minimum", value)) if kind in ("integer", "number") else value
    props = schema.get("properties", {})
    names = schema.get("required") or [n for n, p in sorted(props.items())
                                       if _resolve(doc, p).get("type") in ("boolean", "integer")][:1]
    return {n: sample(doc, props[n]) for n in names if n in props}


def routes(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in sorted(doc["paths"].items())
            for method, op in sorted(item.items()) if method in ("get", "post", "put", "patch", "delete")]


def body_of(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    return None if content is None else sample(doc, content["schema"])


async def snapshot(client: httpx.AsyncClient, doc: dict[str, Any], victims: dict[str, str]) -> dict[str, Any]:
    """Everything the victim's own key reads: every GET route, with its objects in the path."""
    out = {}
    for method, path, _ in routes(doc):
        if method != "GET" or not path.startswith("/api/") or any(f"{{{p}}}" in path for p in CAPABILITY_PARAMS):
            continue
        r = await client.get(path.format(**victims))
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        out[path] = (r.status_code, _stable(body))
    return out


def _stable(body: Any) -> Any:
    """Drop what changes by itself (times of the next attempt, counters of deliveries in flight)."""
    if isinstance(body, dict):
        return {k: _stable(v) for k, v in body.items()
                if k not in ("next_attempt_at", "updated_at", "last_attempt_at", "attempts", "day", "available_now")}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


@pytest.fixture
async def victim(gateway_factory, sink_factory):
    """acme (the victim) with one object of every kind; globex (the attacker) with a key per scope."""
    a = await start_api(gateway_factory, sink_factory)
    gw = a.gw
    provision(gw, a.sink.port, account="globex", domain="globex.test", alias="app@globex.test")
    async with a.client:
        c = a.client
        r = await c.post("/api/v1/send", json=send_body(a.p))
        assert r.status_code == 200, r.text
        message_id = r.json()["message_id"]
        r = await c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
        assert r.status_code == 200, r.text
        webhook_id = r.json()["webhook"]["id"]
        r = await c.post("/api/v1/suppressions", json={"email": "victim-list@dest.org"})
        assert r.status_code == 200, r.text
        own = gw.admin.add_upstream(name="acme relay", ip_pool="acme-own", host="127.0.0.1", port=a.sink.port,
                                    encryption="none", account="acme")
        key_id = (await c.get("/api/v1/keys")).json()["keys"][0]["id"]
        victims = {"alias_id": gw.store.directory.find_alias(a.p.alias).id,
                   "domain_id": gw.store.directory.get_domain(a.p.domain).id,
                   "key_id": key_id, "pool_id": own.id, "webhook_id": webhook_id, "message_id": message_id,
                   "email": "victim-list@dest.org"}
        await wait_for(lambda: a.sink.received)
        yield a, victims


async def attackers(a: Api) -> list[tuple[str, httpx.AsyncClient]]:
    """globex's clients: a key of every scope, and a logged-in session of every role."""
    out = []
    for scope in ATTACKER_SCOPES:
        key, _ = a.gw.admin.create_key("globex", [scope])
        out.append((f"key:{scope}", a.as_key(key)))
    for role in SESSION_ROLES:
        out.append((f"session:{role}", await as_user(a, f"{role}@globex.test", role, account="globex")))
    return out


async def snapshots(a: Api, doc: dict[str, Any], victims: dict[str, str], owner: httpx.AsyncClient) -> dict[str, Any]:
    """What the victim sees with its key and with its owner's session."""
    return {"key": await snapshot(a.client, doc, victims), "session": await snapshot(owner, doc, victims)}


async def test_every_route_keeps_a_second_account_out(victim: tuple[Api, dict[str, str]]):
    a, victims = victim
    gw = a.gw
    doc = (await a.client.get("/api/v1/openapi.json")).json()
    assert any(path == "/api/smtp-pools/{pool_id}" for _, path, _ in routes(doc))  # the session routes too
    operator_upstream = gw.store.directory.get_upstream("sink").id
    owner = await as_user(a, "owner@acme.test", "owner")
    before = await snapshots(a, doc, victims, owner)
    checked = 0
    for who, attacker in await attackers(a):
        async with attacker:
            for method, path, op in routes(doc):
                params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
                if set(params) & CAPABILITY_PARAMS or path in OWN_SESSION:
                    continue
                missing = [p for p in params if p not in victims]
                assert not missing, f"{method} {path}: no victim object for {missing}: add one to the fixture"
                body = body_of(doc, op)
                # a key on a session route (the cookie only): 401
                allowed = (403, 404) if who.startswith("session") or path.startswith("/api/v1/") else (401,)
                targets = [victims] if params != ["pool_id"] else [victims, {"pool_id": operator_upstream}]
                for values in targets:
                    url = path.format(**values)
                    r = await attacker.request(method, url, json=body)
                    if params:
                        assert r.status_code in allowed, (who, method, url, body, r.status_code, r.text)
                        checked += 1
                    elif method == "GET" and path not in LOOPBACK_OPERATOR_VIEWS:
                        leaked = [v for v in (*victims.values(), operator_upstream, "acme") if v in r.text]
                        assert not leaked, (who, path, leaked, r.text[:500])
    after = await snapshots(a, doc, victims, owner)
    await owner.aclose()
    for view in before:
        assert after[view] == before[view], json.dumps(
            {k: (before[view].get(k), after[view].get(k)) for k in before[view] if before[view][k] != after[view].get(k)},
            default=str)[:3000]
    assert checked >= (len(ATTACKER_SCOPES) + len(SESSION_ROLES)) * 10


async def test_a_member_reads_its_own_account_and_changes_nothing(victim: tuple[Api, dict[str, str]]):
    """acme's own member, with the right Origin: every GET answers, every change is 403 and changes nothing."""
    a, victims = victim
    doc = (await a.client.get("/api/v1/openapi.json")).json()
    before = await snapshot(a.client, doc, victims)
    writes = 0
    async with await as_user(a, "member@acme.test", "member") as member:
        for method, path, op in routes(doc):
            params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
            if set(params) & CAPABILITY_PARAMS or path in OWN_SESSION or not path.startswith("/api/"):
                continue
            r = await member.request(method, path.format(**victims), json=body_of(doc, op))
            if method == "GET":
                assert r.status_code == 200, (method, path, r.status_code, r.text)
            else:
                assert r.status_code == 403, (method, path, r.status_code, r.text)
                assert r.json()["success"] is False
                writes += 1
        assert (await member.get("/api/smtp-pools")).json()[0]["id"] == victims["pool_id"]
    assert writes >= 20
    assert await snapshot(a.client, doc, victims) == before
