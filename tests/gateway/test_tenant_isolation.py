"""Tenant isolation, generated from the OpenAPI route list: a second account's keys, one per scope,
go through EVERY route of ``/api/v1`` with the first account's objects in the path. Each answer must be
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

ATTACKER_SCOPES = [s for s in SCOPES if s not in CLI_ONLY_SCOPES]
CAPABILITY_PARAMS = {"token"}  # /aliases/verify/{token}: the unguessable link itself is the credential
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


async def test_every_route_keeps_a_second_account_out(victim: tuple[Api, dict[str, str]]):
    a, victims = victim
    gw = a.gw
    doc = (await a.client.get("/api/v1/openapi.json")).json()
    operator_upstream = gw.store.directory.get_upstream("sink").id
    before = await snapshot(a.client, doc, victims)
    checked = 0
    for scope in ATTACKER_SCOPES:
        key, _ = gw.admin.create_key("globex", [scope])
        async with a.as_key(key) as attacker:
            for method, path, op in routes(doc):
                params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
                if set(params) & CAPABILITY_PARAMS:
                    continue
                missing = [p for p in params if p not in victims]
                assert not missing, f"{method} {path}: no victim object for {missing}: add one to the fixture"
                body = body_of(doc, op)
                targets = [victims] if params != ["pool_id"] else [victims, {"pool_id": operator_upstream}]
                for values in targets:
                    url = path.format(**values)
                    r = await attacker.request(method, url, json=body)
                    if params:
                        assert r.status_code in (403, 404), (scope, method, url, body, r.status_code, r.text)
                        checked += 1
                    elif method == "GET":
                        leaked = [v for v in (*victims.values(), operator_upstream, "acme") if v in r.text]
                        assert not leaked, (scope, path, leaked, r.text[:500])
    after = await snapshot(a.client, doc, victims)
    assert after == before, json.dumps({k: (before.get(k), after.get(k)) for k in before if before[k] != after.get(k)},
                                       default=str)[:3000]
    assert checked >= len(ATTACKER_SCOPES) * 10
