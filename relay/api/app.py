"""The HTTP front door (FastAPI): health, readiness, metrics, and the alias verification link.

Thin like the SMTP door: each route calls the pipeline or the admin operations and maps their
errors to the seeds' JSON error format ``{"success": false, "error": ...}``.
"""

from __future__ import annotations

import html
import ipaddress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from relay.api import admin as api_admin

from relay.api import common as api_common

from relay.api import messages as api_messages

from relay.api import send as api_send

from relay.api import webhooks as api_webhooks

from relay.ops import metrics
from relay.vocab import NotFound, RelayError
from relay.store.stats import pools_in_use

ADMIN_SCOPES = frozenset({"admin"})


def error(status: int, message: str, field_errors: dict[str, list[str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if field_errors:
        body["details"] = {"fieldErrors": field_errors}
    return JSONResponse(body, status_code=status)


def create_app(gateway: Any) -> FastAPI:
    """``gateway`` is the running :class:`relay.gateway.Gateway` (store, runner, admin, pipeline)."""
    app = FastAPI(title="Relay", version="0.1.0", openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the event loop answers."""
        return {"status": "ok", "worker": gateway.worker}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: listeners bound, store reachable, an upstream healthy in every pool in use."""
        ready, checks = await readiness(gateway)
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_(request: Request) -> Response:
        """Prometheus exposition. Free from loopback; elsewhere a Bearer API key with the admin scope."""
        if not _is_loopback(request.client.host if request.client else ""):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            try:
                if scheme.lower() != "bearer" or not token.strip():
                    raise RelayError(401, "5.7.8", "Unauthorized")
                await gateway.pipeline.authenticate("", token.strip(), scopes=ADMIN_SCOPES)
            except RelayError:
                return error(401, "An API key with the admin scope is required")
        return Response(await metrics.render(gateway), media_type=metrics.CONTENT_TYPE)

    @app.get("/api/v1/aliases/verify/{token}", response_class=HTMLResponse)
    async def verify_alias(token: str, request: Request) -> HTMLResponse:
        try:
            alias = await gateway.runner.write(gateway.admin.verify_alias, None, token)
        except NotFound:
            return HTMLResponse("<h1>This verification link is not valid (or was already used).</h1>", 404)
        gateway.pipeline.invalidate()
        return HTMLResponse(f"<h1>{html.escape(alias.email)} is verified.</h1><p>It can now send through Relay.</p>")

    api_common.install(app)  # the seeds' error format, 400 for bad input, the OpenAPI document
    app.include_router(api_send.router(gateway))
    app.include_router(api_admin.router(gateway))
    app.include_router(api_messages.router(gateway))
    app.include_router(api_webhooks.router(gateway))
    return app


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def readiness(gateway: Any) -> tuple[bool, dict[str, Any]]:
    """(ready, detail) for ``/readyz``."""
    listeners = {name: bool(server.is_serving()) and not gateway.stopping
                 for name, server in gateway.servers.items()}
    checks: dict[str, Any] = {"listeners": {"ok": bool(listeners) and all(listeners.values()), "detail": listeners}}
    try:
        await gateway.runner.read(gateway.store.ping)
        in_use = await gateway.runner.read(pools_in_use, gateway.store)
        checks["store"] = {"ok": True}
    except Exception as exc:  # the detail names the failure, never a URL or a password
        checks["store"] = {"ok": False, "error": type(exc).__name__}
        in_use = set()
    router = gateway.router
    pools: dict[str, Any] = {}
    for pool in sorted(in_use):
        ups = router.pools.get(pool, [])
        healthy = [u.name for u in ups if router.breakers[u.cfg.id].failures < router.threshold]
        pools[pool] = {"ok": bool(healthy), "healthy": healthy,
                       "down": [u.name for u in ups if u.name not in healthy]}
    checks["pools"] = {"ok": all(p["ok"] for p in pools.values()), "detail": pools}
    return all(c["ok"] for c in checks.values()), checks
