"""What the ``/api/v1`` routes are given: the services (set once on ``app.state`` by
:func:`relay.api.app.create_app`) and the caller's identity, as FastAPI dependencies.

A route names what it needs in its signature (``svc: Services``, ``ident: AdminKey``); nothing is
looked up from a global or captured from a gateway object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from relay.api.common import ApiError
from relay.api.session import COOKIE, ROLE_REFUSED, SAFE_METHODS, session_identity
from relay.delivery.router import Router
from relay.events.webhooks import WebhookService
from relay.ops.config import Settings
from relay.secrets import MasterKey
from relay.services.admin import Admin
from relay.services.directory_api import AccountDirectory
from relay.services.messages import MessageLog
from relay.services.send import Sender
from relay.services.suppressions import SuppressionList
from relay.services.upstreams_api import UpstreamAdmin
from relay.services.users import Users
from relay.services.webhooks_api import WebhookAdmin
from relay.store import Store
from relay.store.directory import UpstreamRec
from relay.store.runner import DbRunner
from relay.submission.pipeline import Pipeline
from relay.vocab import Identity, SEND_SCOPES
from relay.vocab import RelayError


class SessionCounter(Protocol):
    sessions: int  # open SMTP connections of one listener


class Process(Protocol):
    """The running process as ``/healthz`` and ``/readyz`` see it (the gateway is one)."""

    worker: int
    stopping: bool
    servers: Mapping[str, asyncio.AbstractServer]
    handlers: Mapping[str, SessionCounter]


@dataclass(frozen=True)
class ApiServices:
    """Everything the HTTP API uses, built once by the caller of ``create_app``."""

    settings: Settings
    store: Store
    runner: DbRunner
    admin: Admin
    pipeline: Pipeline
    router: Router  # the delivery router: which upstreams of a pool are healthy
    webhooks: WebhookService
    master_key: MasterKey
    load_upstreams: Callable[[list[UpstreamRec]], None]  # rebuild the pools after an upstream changed
    process: Process
    users: Users  # dashboard users and their sessions (the sb-access-token cookie)


class GatewayParts(Process, Protocol):
    """The attributes of :class:`relay.gateway.Gateway` that :func:`from_gateway` reads."""

    settings: Settings
    store: Store
    runner: DbRunner
    admin: Admin
    pipeline: Pipeline
    router: Router
    master_key: MasterKey
    webhooks: WebhookService
    users: Users

    def load_upstreams(self, recs: list[Any] | None = None) -> None: ...


def from_gateway(gateway: GatewayParts) -> ApiServices:
    """The API's services of a gateway (the composition root may as well build them itself)."""
    return ApiServices(settings=gateway.settings, store=gateway.store, runner=gateway.runner, admin=gateway.admin,
                       pipeline=gateway.pipeline, router=gateway.router, webhooks=gateway.webhooks,
                       master_key=gateway.master_key, load_upstreams=gateway.load_upstreams, process=gateway,
                       users=gateway.users)


# -- the services --------------------------------------------------------------------------------------
def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


Services = Annotated[ApiServices, Depends(services)]


def _sender(svc: Services) -> Sender:
    return Sender(svc.pipeline, svc.router)


def _directory(svc: Services) -> AccountDirectory:
    return AccountDirectory(svc.runner, svc.store.directory, svc.admin, svc.pipeline.invalidate)


def _upstreams(svc: Services) -> UpstreamAdmin:
    return UpstreamAdmin(svc.runner, svc.store.directory, svc.admin, svc.settings, svc.load_upstreams)


def _suppressions(svc: Services) -> SuppressionList:
    return SuppressionList(svc.runner, svc.store, svc.pipeline.policies.suppression_book, svc.webhooks.wake)


def _messages(svc: Services) -> MessageLog:
    return MessageLog(svc.runner, svc.store)


def _webhooks(svc: Services) -> WebhookAdmin:
    return WebhookAdmin(svc.runner, svc.webhooks, svc.master_key, max_per_account=svc.settings.webhooks.max_per_account)


SenderDep = Annotated[Sender, Depends(_sender)]
DirectoryDep = Annotated[AccountDirectory, Depends(_directory)]
UpstreamsDep = Annotated[UpstreamAdmin, Depends(_upstreams)]
SuppressionsDep = Annotated[SuppressionList, Depends(_suppressions)]
MessagesDep = Annotated[MessageLog, Depends(_messages)]
WebhooksDep = Annotated[WebhookAdmin, Depends(_webhooks)]


# -- identity ------------------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer rk_...")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authenticated(*any_of: str) -> Callable[..., Any]:
    """A dependency: the caller's :class:`Identity` (401 without a valid key) holding one of
    ``any_of`` (403 otherwise; nothing: any valid key). Without an ``Authorization`` header, the
    dashboard's session cookie stands for a key with its role's scopes (a member: reads only)."""
    needed = frozenset(any_of)

    async def dependency(request: Request, svc: Services, creds: Credentials) -> Identity:
        change = request.method not in SAFE_METHODS
        if creds is None or not creds.credentials.strip():
            return await _session(request, needed, change)
        peer = request.client.host if request.client else ""
        throttle = svc.pipeline.auth_throttle
        if throttle.locked(peer):  # per client IP (a username would lock out every client)
            raise ApiError(429, "Too many failed authentication attempts, try again later")
        try:
            ident = await svc.pipeline.authenticate("", creds.credentials.strip(), scopes=frozenset())
        except RelayError:
            throttle.failure(peer)
            raise ApiError(401, "Invalid API key") from None
        if not ident.permits(needed, change=change):
            raise ApiError(403, f"This API key lacks the required scope (one of: {', '.join(sorted(needed))})")
        return ident

    return dependency


async def _session(request: Request, needed: frozenset[str], change: bool) -> Identity:
    """The identity of the session cookie (no Authorization header was sent)."""
    if "authorization" not in request.headers:
        session = await session_identity(request)
        if session is not None:
            if not session.identity.permits(needed, change=change):
                raise ApiError(403, ROLE_REFUSED)
            return session.identity
        if COOKIE in request.cookies:
            raise ApiError(401, "Not logged in (the session ended): log in again, or send Authorization: Bearer <key>")
    raise ApiError(401, "Missing API key: send Authorization: Bearer <key>")


AnyKey = Annotated[Identity, Depends(authenticated())]
# the scopes that change (and read) each kind of object; the dashboard asks the same of a session's role
ADMIN_SCOPES = ("admin", "operator")  # operator: also the gateway-wide objects
ALIAS_SCOPES = ("aliases", "admin")
AdminKey = Annotated[Identity, Depends(authenticated(*ADMIN_SCOPES))]
OperatorKey = Annotated[Identity, Depends(authenticated("operator"))]
AliasesKey = Annotated[Identity, Depends(authenticated(*ALIAS_SCOPES))]
SendKey = Annotated[Identity, Depends(authenticated(*SEND_SCOPES, "sandbox"))]
