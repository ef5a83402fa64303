"""Request bodies are bounded before they are read (:func:`body_cap`: the largest message as base64 JSON,
plus room): a declared length over the cap is 413 at once, a body that grows past it (chunked) is cut
off with 413, and a state-changing /api/ request without credentials is 401 before a byte of its body
is read (no unauthenticated upload costs memory; credentials are a Bearer key or the session cookie,
not just any cookie). Bodies being read and handled draw on one budget (``api.body_memory_budget``): a
request reserves its declared length (the cap when chunked) before its body is read and gives it back
once answered; one that does not fit is 503."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relay.api.session import has_session_cookie
from relay.throttle import MemoryBudget

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PREFIXES = ("/api/v1/aliases/verify/", "/api/auth/login")  # the verification link, a login: no key
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def body_cap(max_message_size: int) -> int:
    """The largest request body: a message of ``smtp.max_message_size`` as base64 in JSON, plus 1 MiB."""
    return max_message_size * 4 // 3 + (1 << 20)


async def answer(send: Send, status: int, message: str, *extra: tuple[bytes, bytes]) -> None:
    body = json.dumps({"success": False, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: ``limit()`` is the current cap in bytes (it follows a reload); the bodies in
    flight reserve from *budget*."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int], budget: MemoryBudget) -> None:
        self.app, self.limit, self.budget = app, limit, budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if (method in _WRITES and path.startswith("/api/") and not path.startswith(PUBLIC_PREFIXES)
                and not headers.get(b"authorization", b"").strip()
                and not has_session_cookie(v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"cookie")):
            return await answer(send, 401, "Missing API key: send Authorization: Bearer <key>")
        limit = self.limit()
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await answer(send, 413, f"Request body too large (at most {limit} bytes)")
        size = int(declared) if declared is not None else limit if b"transfer-encoding" in headers else 0
        if not self.budget.reserve(size):
            return await answer(send, 503, "Too many request bodies in flight, try again later", (b"retry-after", b"1"))
        try:
            await self._bounded(scope, receive, send, limit)
        finally:
            self.budget.release(size)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        state = {"over": False, "answered": False}
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state["over"] = True  # stop reading: the app sees the client go, we answer 413
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not state["over"]:
                return await send(message)
            if not state["answered"]:
                state["answered"] = True
                await answer(send, 413, f"Request body too large (at most {limit} bytes)")

        await self.app(scope, counted, guarded)
        if state["over"] and not state["answered"]:
            await answer(send, 413, f"Request body too large (at most {limit} bytes)")
