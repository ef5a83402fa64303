"""What every ``/api/v1`` route shares: the ONE mapping of errors to the seeds' JSON format, request
validation as ``400`` with field errors, the OpenAPI document (generated from the routes, then given
the Bearer scheme and the 400 shape), and the request field types. The dependencies (services, the
caller's identity) are in :mod:`relay.api.deps`.

Error body (seeds): ``{"success": false, "error": "...", "details": {"fieldErrors": {...}}}``;
422 adds ``"suppressed": true``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.submission.pipeline import SUPPRESSION_STATUS
from relay.submission.compose import ComposeError
from relay.vocab import Conflict, Forbidden, Invalid, NotEnabled, NotFound, RelayError, Unavailable

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
SUPPRESSED_MESSAGE = "Send suppressed — recipient unsubscribed or bounced"
_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,320}$")
ADMIN_ERRORS = (Conflict, Forbidden, Invalid, NotEnabled, NotFound, Unavailable)  # the refusals of relay.services


# -- errors -------------------------------------------------------------------------------------------
class ApiError(Exception):
    """A refusal the routes raise; rendered by :func:`error_response`."""

    def __init__(self, status: int, message: str, field_errors: dict[str, list[str]] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field_errors = field_errors
        self.extra = extra


def error_response(status: int, message: str, field_errors: dict[str, list[str]] | None = None,
                   **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if field_errors:
        body["details"] = {"fieldErrors": field_errors}
    body.update(extra)
    return JSONResponse(body, status_code=status)


def field_error(field: str, message: str) -> ApiError:
    return ApiError(400, "Validation failed", {field: [message]})


def relay_error(exc: RelayError) -> ApiError:
    """THE mapping of a pipeline refusal (or a policy Verdict) to HTTP: its ``http_status``, else 503
    for a temporary and 400 for a permanent one. 422 is the seeds' suppressed answer."""
    status = exc.http_status or (503 if exc.temporary else 400)
    if status == SUPPRESSION_STATUS:
        return ApiError(SUPPRESSION_STATUS, SUPPRESSED_MESSAGE, suppressed=True)
    if status == 400 and exc.field:
        return field_error(exc.field, exc.public)
    return ApiError(status, exc.public)


def admin_error(exc: Exception, not_found: str = "Not found") -> ApiError:
    """An admin operation's refusal (relay.services.admin): 404, 409, 403, 503, 501 (turned off by the
    configuration) or 400 with the field."""
    if isinstance(exc, NotFound):
        return ApiError(404, not_found)
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, Forbidden):
        return ApiError(403, str(exc))
    if isinstance(exc, Unavailable):
        return ApiError(503, str(exc))
    if isinstance(exc, NotEnabled):
        return ApiError(501, str(exc))
    if isinstance(exc, Invalid):
        return field_error(exc.field or "body", str(exc))
    if isinstance(exc, RelayError):
        return relay_error(exc)
    if isinstance(exc, ComposeError):
        return field_error(exc.field.split(".", 1)[0], f"{exc.field}: {exc.message}")
    raise exc


@contextlib.contextmanager
def refusals(not_found: str = "Not found", catch: tuple[type[Exception], ...] = ADMIN_ERRORS) -> Iterator[None]:
    """``with refusals("Alias not found"): await service...``: a service's refusal becomes its HTTP error."""
    try:
        yield
    except catch as exc:
        raise admin_error(exc, not_found) from None


def _field_errors(exc: RequestValidationError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        field = loc[0] if loc else "body"
        message = str(err.get("msg", "Invalid value")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            field, message = "body", "Invalid JSON"
        elif field == "to" and err.get("type") == "too_short" and len(loc) == 1:
            message = "Must have at least 1 recipient"
        elif err.get("type") == "missing":
            message = "Required"
        if len(loc) > 1:
            message = f"{'.'.join(loc[1:])}: {message}"
        out.setdefault(field, []).append(message)
    return out


def install(app: FastAPI) -> None:
    """Error handlers and the OpenAPI document for the whole app (one call in create_app)."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field_errors, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "Validation failed", _field_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed", extra={"path": request.url.path})
        return error_response(500, "Internal error")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with request validation answered as 400 (not FastAPI's 422)."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="Relay HTTP API: the seeds' paths, fields and error format under /api/v1.")
    for path_item in doc.get("paths", {}).values():
        for op in path_item.values():
            responses = op.get("responses", {})
            ref = str(responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {}))
            if "HTTPValidationError" in ref:
                del responses["422"]
                responses.setdefault("400", _ref_response("Validation failed"))
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc


def _ref_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


# -- response documentation -------------------------------------------------------------------------
class FieldErrors(BaseModel):
    fieldErrors: dict[str, list[str]]


class ErrorBody(BaseModel):
    """Every error: ``success`` false and a human-readable ``error``."""

    model_config = ConfigDict(extra="allow")
    success: bool = False
    error: str
    details: FieldErrors | None = None
    suppressed: bool | None = None


class Ok(BaseModel):
    success: bool = True


_DESCRIPTIONS = {400: "Validation failed", 401: "Missing or invalid API key", 403: "Forbidden (scope or rule)",
                 404: "Not found", 409: "Conflict", 422: "Suppressed", 429: "Rate or quota exceeded",
                 501: "Not enabled on this gateway (e.g. no suppression policy)", 503: "Temporarily unavailable"}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of the error statuses a route can answer (400/401/403 always)."""
    return {c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]} for c in sorted({400, 401, 403, *codes})}


# -- path ids and dates ----------------------------------------------------------------------------
def check_id(value: str, not_found: str) -> str:
    """Path ids that could never exist answer 404 without reaching the store."""
    if not _ID.match(value):
        raise ApiError(404, not_found)
    return value


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds, as the seeds write it: 2026-02-17T12:00:00.000Z."""
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# -- request field types ------------------------------------------------------------------------------
# every character str.splitlines() breaks on (VT, FF, FS, GS, RS, NEL, U+2028, U+2029 too), and NUL
_BREAKS = frozenset("\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _one_line(value: str) -> str:
    if not _BREAKS.isdisjoint(value):
        raise ValueError("must not contain line breaks or NUL characters")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


OneLine = Annotated[str, AfterValidator(_one_line)]  # anything that may end up in a header or a log line
Text = Annotated[str, AfterValidator(_no_nul)]

# a message tag: in a send, and as a filter of GET /messages
TAG_MAX = 64
_TAG_CHARS = "A-Za-z0-9_.:@/+-"
TAG_PATTERN = rf"^[{_TAG_CHARS}]+$"
_TAG = re.compile(rf"^[{_TAG_CHARS}]{{1,{TAG_MAX}}}$")


def _tag(value: str) -> str:
    if not _TAG.match(value):
        raise ValueError(f"tags are 1-{TAG_MAX} characters: letters, digits and _ . : @ / + -")
    return value


Tag = Annotated[str, AfterValidator(_tag)]


def line(max_length: int, min_length: int = 0) -> Any:
    """A one-line string of bounded length (the constraints sit on the str, also inside ``| None``)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_one_line)]


def text(max_length: int) -> Any:
    return Annotated[str, StringConstraints(max_length=max_length), AfterValidator(_no_nul)]


class Body(BaseModel):
    """Request bodies: unknown fields are ignored (drop-in clients may send more than we read)."""

    model_config = ConfigDict(extra="ignore")
