"""A browser-like HTTP client for the dashboard's tests: cookies, and forms posted from the
gateway's own origin with the session's CSRF field."""

from __future__ import annotations

import re
from typing import Any

import httpx

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


class Browser:
    """An HTTP client that behaves like a browser on the dashboard: cookies, same-origin forms."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=30, follow_redirects=False)
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        r = await self.http.get(path, **kw)
        found = CSRF.search(r.text)
        if found:
            self.csrf = found.group(1)
        return r

    async def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
                   **kw: Any) -> httpx.Response:
        form = {"csrf": self.csrf, **(data or {})} if csrf else dict(data or {})
        return await self.http.post(path, data=form, headers={"Origin": self.base}, **kw)

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        r = await self.post("/login", {"email": email, "password": password}, csrf=False)
        if r.status_code == 303:
            await self.get("/")  # picks up the CSRF field of the session
        return r
