"""The HTTP front door (FastAPI): the app, its routers, and the services they are given.

Thin like the SMTP door: each route builds a typed request, calls one service function and maps
its outcome (or refusal) to the seeds' JSON, errors as ``{"success": false, "error": ...}``.
"""

from __future__ import annotations

from fastapi import FastAPI

from relay.api import (
    aliases,
    auth,
    common,
    domains,
    health,
    keys,
    messages,
    send,
    suppressions,
    upstreams,
    usage,
    webhooks,
)
from relay.api.deps import ApiServices, GatewayParts, from_gateway
from relay.api.csrf import SameOrigin
from relay.api.limits import BodyLimit, body_cap
from relay.throttle import MemoryBudget

ROUTERS = (health.router, aliases.verify_router, send.router, aliases.router, upstreams.router, domains.router,
           suppressions.router, keys.router, usage.router, messages.router, webhooks.router, auth.router,
           upstreams.session_router)


def create_app(services: ApiServices | GatewayParts) -> FastAPI:
    """The API over ``services`` (built by the composition root; a gateway is still accepted and
    turned into its :class:`ApiServices` by :func:`relay.api.deps.from_gateway`)."""
    if not isinstance(services, ApiServices):
        services = from_gateway(services)
    app = FastAPI(title="Relay", version="0.1.0", openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None)
    app.state.services = services
    cap = body_cap(services.settings.smtp.max_message_size)
    app.state.body_budget = MemoryBudget(services.settings.api.body_memory_budget)
    app.add_middleware(BodyLimit, limit=lambda: cap, budget=app.state.body_budget)
    # outermost: a cross-site state change with the session cookie is refused before anything else
    app.add_middleware(SameOrigin, public_url=lambda: services.users.settings.public_url)  # follows a reload
    common.install(app)  # the seeds' error format, 400 for bad input, the OpenAPI document
    for router in ROUTERS:
        app.include_router(router)
    return app
