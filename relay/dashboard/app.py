"""The dashboard on the API's app: its pages, its static files, and its refusals as pages."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from relay.api.app import create_app
from relay.api.deps import ApiServices, GatewayParts
from relay.dashboard import auth
from relay.dashboard.pages import (
    aliases,
    domains,
    keys,
    messages,
    overview,
    pools,
    suppressions,
    usage,
    users,
    webhooks,
)
from relay.dashboard.web import LoginRequired, PageError, page, redirect

ROUTERS = (auth.router, overview.router, messages.router, aliases.router, domains.router, pools.router,
           suppressions.router, keys.router, webhooks.router, usage.router, users.router)
TITLES = {403: "Not allowed", 404: "Not found"}


def install(app: FastAPI) -> None:
    """Add the dashboard's routes (``/``, ``/login``, ...) and ``/static`` to ``app``."""
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("relay.dashboard", "static")]), name="static")

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, _exc: LoginRequired) -> Response:
        return redirect("/login")

    @app.exception_handler(PageError)
    async def _refused(request: Request, exc: PageError) -> Response:
        return page(request, "error.html", None, status=exc.status, title=TITLES.get(exc.status, "Refused"),
                    message=exc.message)


def create_web_app(services: ApiServices | GatewayParts) -> FastAPI:
    """The HTTP listener's app: the API (:func:`relay.api.app.create_app`) and the dashboard."""
    app = create_app(services)
    install(app)
    return app
