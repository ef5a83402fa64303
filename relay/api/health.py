"""``/healthz``, ``/readyz`` and ``/metrics``: the process as an orchestrator and Prometheus see it."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from relay.api.common import error_response
from relay.api.deps import ApiServices, Services
from relay.ops import metrics
from relay.services.sealed import unreadable_secret
from relay.store.stats import ip_pools_in_use, queue_stats
from relay.vocab import RelayError

router = APIRouter()
OPERATOR_SCOPES = frozenset({"operator"})  # an account's admin key sees neither /metrics nor the detail


@router.get("/healthz")
async def healthz(svc: Services) -> dict[str, Any]:
    """Liveness: the event loop answers."""
    return {"status": "ok", "worker": svc.process.worker}


@router.get("/readyz")
async def readyz(request: Request, svc: Services) -> JSONResponse:
    """Readiness: listeners bound, store reachable, an upstream healthy in every pool in use. The
    checks' detail (which upstreams are down) only from loopback or with an operator key."""
    ready, checks = await readiness(svc)
    body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if await _operator_view(request, svc):
        body["checks"] = checks
    return JSONResponse(body, status_code=200 if ready else 503)


async def _operator_view(request: Request, svc: ApiServices) -> bool:
    """Loopback (the client uvicorn reports: the forwarded one behind ``[api] trusted_proxies``), or a
    Bearer API key with the operator scope."""
    if _is_loopback(request.client.host if request.client else ""):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        await svc.pipeline.authenticate("", token.strip(), scopes=OPERATOR_SCOPES)
    except RelayError:
        return False
    return True


@router.get("/metrics")
async def metrics_(request: Request, svc: Services) -> Response:
    """Prometheus exposition. Free from loopback; elsewhere a Bearer API key with the operator scope."""
    if not await _operator_view(request, svc):
        return error_response(401, "An API key with the operator scope is required")
    stats = await svc.runner.read(queue_stats, svc.store)
    router = svc.router
    ups = [(pool, u.name, not ((b := router.breakers.get(u.cfg.id)) and b.failures >= router.threshold))
           for pool, members in sorted(router.ip_pools.items()) for u in members]
    snap = metrics.Snapshot(depth=stats.depth, oldest_created_at=stats.oldest_created_at,
                            sessions_open={name: h.sessions for name, h in svc.process.handlers.items()},
                            upstreams_up=ups)
    return Response(metrics.render(snap), media_type=metrics.CONTENT_TYPE)


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def readiness(svc: ApiServices) -> tuple[bool, dict[str, Any]]:
    """(ready, detail) for ``/readyz``."""
    proc = svc.process
    listeners = {name: bool(server.is_serving()) and not proc.stopping for name, server in proc.servers.items()}
    checks: dict[str, Any] = {"listeners": {"ok": bool(listeners) and all(listeners.values()), "detail": listeners}}
    try:
        await svc.runner.read(svc.store.ping)
        in_use = await svc.runner.read(ip_pools_in_use, svc.store)
        if svc.settings.system.ip_pool:  # system mail's route must be served too
            in_use = {*in_use, svc.settings.system.ip_pool}
        checks["store"] = {"ok": True}
        unreadable = await svc.runner.read(unreadable_secret, svc.store, svc.master_key)
        checks["secrets"] = {"ok": unreadable is None} if unreadable is None else {
            "ok": False, "error": f"the master key does not open {unreadable} in the store"}
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready"; the detail names it, never a URL
        checks["store"] = {"ok": False, "error": type(exc).__name__}
        in_use = set()
    router_ = svc.router
    pools: dict[str, Any] = {}
    for pool in sorted(in_use):
        ups = router_.ip_pools.get(pool, [])
        healthy = [u.name for u in ups if router_.breakers[u.cfg.id].failures < router_.threshold]
        pools[pool] = {"ok": bool(healthy), "healthy": healthy,
                       "down": [u.name for u in ups if u.name not in healthy]}
    checks["pools"] = {"ok": all(p["ok"] for p in pools.values()), "detail": pools}
    return all(c["ok"] for c in checks.values()), checks
