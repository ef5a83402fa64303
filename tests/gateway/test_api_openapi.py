"""The OpenAPI document is generated from the routes, and schemathesis finds no 5xx and no response
that breaks it (status codes, content types, bodies), for valid and invalid requests alike.

The API runs on a real HTTP server in a thread (schemathesis is synchronous), on a gateway whose
delivery side is NOT started: fuzzed SMTP pools and webhooks may name any host, and nothing may be
sent there. DNS lookups (domain verification) go to a closed loopback port.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import requests
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings

from relay.api.app import create_app
from relay.api.deps import from_gateway
from relay.gateway import Gateway
from tests.support.api import ALL_SCOPES, POLICIES
from tests.conftest import free_port, make_settings, provision

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = {"positive": 12, "negative": 8}
SKIP = {"/api/v1/smtp-pools/{pool_id}/test",  # connects to the pool's host: fuzzed hosts are not ours
        "/api/v1/aliases/verify/{token}"}  # the HTML verification link, not part of the JSON API

ISSUE_PATHS = {
    "/api/v1/send": {"post"}, "/api/v1/aliases": {"get", "post"},
    "/api/v1/aliases/{alias_id}": {"get", "patch", "delete"}, "/api/v1/smtp-pools": {"get", "post"},
    "/api/v1/smtp-pools/{pool_id}": {"get", "patch", "delete"}, "/api/v1/smtp-pools/{pool_id}/test": {"post"},
    "/api/v1/domains": {"get", "post"}, "/api/v1/domains/{domain_id}": {"get", "delete"},
    "/api/v1/domains/{domain_id}/verify": {"post"}, "/api/v1/domains/{domain_id}/dkim/rotate": {"post"},
    "/api/v1/suppressions": {"get", "post"}, "/api/v1/suppressions/{email}": {"delete"},
    "/api/v1/keys": {"get", "post"}, "/api/v1/keys/{key_id}": {"delete"}, "/api/v1/usage": {"get"},
    "/api/v1/messages": {"get"}, "/api/v1/messages/{message_id}": {"get"}, "/api/v1/sandbox": {"get", "delete"},
    "/api/v1/webhooks": {"get", "post"}, "/api/v1/webhooks/{webhook_id}": {"get", "delete"},
    "/api/v1/webhooks/{webhook_id}/deliveries": {"get"},
}


class ApiThread:
    """create_app(services of the gateway) served by uvicorn in its own thread and event loop."""

    def __init__(self, gw: Gateway, port: int) -> None:
        self.gw = gw
        self.server = uvicorn.Server(uvicorn.Config(create_app(from_gateway(gw)), host="127.0.0.1", port=port, lifespan="off",
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.gw.pipeline.start()
        try:
            await self.server.serve()
        finally:
            await self.gw.pipeline.close()

    def __enter__(self) -> "ApiThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "API server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.gw.runner.shutdown()
        self.gw.store.close()


@pytest.fixture
def served(tmp_path):
    port = free_port()
    cfg = make_settings(tmp_path, dns={"nameservers": ["127.0.0.1"], "port": free_port()}, policies=POLICIES,
                        api={"listen": f"127.0.0.1:{port}"})
    gw = Gateway(cfg, env={})
    p = provision(gw, free_port(), scopes=ALL_SCOPES)
    with ApiThread(gw, port):
        yield f"http://127.0.0.1:{port}", p


def test_openapi_document_is_generated_and_complete(served):
    base, _ = served
    doc = httpx.get(base + "/api/v1/openapi.json").json()
    ops = {path: set(item) for path, item in doc["paths"].items()}
    for path, methods in ISSUE_PATHS.items():
        assert methods <= ops.get(path, set()), path
    send = doc["paths"]["/api/v1/send"]["post"]
    assert {"200", "202", "400", "401", "403", "422", "429"} <= set(send["responses"])
    assert "HTTPValidationError" not in str(doc)
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    props = doc["components"]["schemas"]["SendRequest"]["properties"]
    assert {"from", "to", "cc", "bcc", "reply_to", "subject", "html", "text", "alias_id", "idempotency_key", "tags",
            "metadata", "attachments"} <= set(props)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served):
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    base, p = served
    schema = schemathesis.openapi.from_url(base + "/api/v1/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    headers = {"Authorization": f"Bearer {p.key}"}
    session = requests.Session()
    tested = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in SKIP or not op.path.startswith("/api/v1/"):
            continue
        for mode, count in (("positive", EXAMPLES["positive"]), ("negative", EXAMPLES["negative"])):
            strategy = op.as_strategy(generation_mode=GenerationMode(mode))

            @given(case=strategy)
            @settings(max_examples=count, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                case.call_and_validate(base_url=base, session=session, headers=headers, checks=checks)

            try:
                run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # schemathesis' FailureGroup too; every operation's, not just the first
                failures.append(f"{op.method.upper()} {op.path} ({mode}): {exc!r}")
            tested += 1
    assert tested >= 2 * (sum(len(m) for m in ISSUE_PATHS.values()) - 1)
    assert not failures, "\n\n".join(failures)
