"""What every dashboard page shares: the templates (Jinja2, autoescaped), the security headers, the
viewer (the signed-in user and what their role may change), and a service refusal as a page.

Pages only translate: they read and write through the services the ``/api/v1`` routes use, and turn a
refusal into the same status and message the API would answer, on a page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ValidationError

from relay.api.common import ADMIN_ERRORS, ApiError, admin_error
from relay.services.users import SessionIdentity
from relay.vocab import Identity, RelayError

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
CSRF_FIELD = "csrf"
MANAGERS = ("owner", "admin")  # the roles that manage the account's users


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates = jinja2.Environment(loader=jinja2.PackageLoader("relay.dashboard", "templates"),
                               autoescape=True, trim_blocks=True, lstrip_blocks=True)
templates.filters["when"] = _when


@dataclass(frozen=True)
class Viewer:
    """The signed-in user: their session (account, role and the role's scopes)."""

    session: SessionIdentity
    csrf: str  # the hidden field of every form (derived from the session token; the Origin check is the other guard)

    @property
    def ident(self) -> Identity:
        return self.session.identity

    @property
    def user_id(self) -> str:
        return self.session.user_id

    @property
    def email(self) -> str:
        return self.session.email

    @property
    def role(self) -> str:
        return self.session.role

    def can(self, *scopes: str) -> bool:
        """Whether the role may make a change the API allows with one of ``scopes`` (the API's rule)."""
        return self.ident.permits(frozenset(scopes), change=True)

    @property
    def manages_users(self) -> bool:
        return self.role in MANAGERS


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"relay-dashboard-form", hashlib.sha256).hexdigest()[:40]


class PageError(Exception):
    """A refusal shown as a page of its own (404 for another account's object, 403 for a member's POST)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginRequired(Exception):
    """No valid session: 303 to the login page."""


def secured(response: Any) -> Any:
    response.headers.update(SECURITY_HEADERS)
    return response


def page(request: Request, template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with the security headers."""
    html = templates.get_template(template).render(request=request, viewer=viewer, path=request.url.path, **context)
    return secured(HTMLResponse(html, status_code=status))


def redirect(url: str) -> RedirectResponse:
    """After a change: 303 to a page (a reload does not repeat the POST)."""
    return secured(RedirectResponse(url, status_code=303))


REFUSALS = (ApiError, RelayError, *ADMIN_ERRORS)


def refusal(exc: Exception) -> ApiError:
    """A service's refusal as the API answers it: status and message (field errors spelled out)."""
    err = exc if isinstance(exc, ApiError) else admin_error(exc)
    if err.field_errors:
        detail = "; ".join(f"{field}: {', '.join(msgs)}" for field, msgs in err.field_errors.items())
        return ApiError(err.status, detail)
    return err


def refused(exc: Exception, not_found: str) -> ApiError:
    """A refused change of one object: its 404 is the page's own (:class:`PageError`, raised), any
    other refusal is returned, for the page to show."""
    err = refusal(exc)
    if err.status == 404:
        raise PageError(404, not_found) from None
    return err


def validated(model: type[BaseModel], fields: Mapping[str, Any]) -> Any:
    """A form checked by the API's request model (the same limits as the JSON body); ApiError 400 otherwise."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "form"
        raise ApiError(400, f"{field}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}") from None


def blank(value: str | None) -> str | None:
    """An empty form field is a missing one."""
    value = (value or "").strip()
    return value or None
