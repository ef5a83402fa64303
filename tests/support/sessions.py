"""Helpers for the dashboard-session tests: users added through the Users service, a browser-like
HTTP client holding a session cookie (and, like a browser on the dashboard's own pages, its Origin)."""

from __future__ import annotations

import httpx

from relay.api.session import COOKIE
from tests.support.api import Api

PASSWORD = "correct horse battery staple"


async def add_user(api: Api, email: str, role: str, account: str = "acme", password: str = PASSWORD) -> str:
    rec, _ = await api.gw.users.add(account, email, role, password)
    return rec.id


async def login_token(api: Api, email: str, password: str = PASSWORD) -> str:
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        r = await c.post("/api/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return r.cookies[COOKIE]


def browser(api: Api, token: str | None, origin: str | None = "own") -> httpx.AsyncClient:
    """A client sending the session cookie ``token`` and ``Origin: origin`` ("own": the gateway's)."""
    headers = {} if origin is None else {"Origin": api.base if origin == "own" else origin}
    cookies = {COOKIE: token} if token else None
    return httpx.AsyncClient(base_url=api.base, headers=headers, cookies=cookies, timeout=30)


async def as_user(api: Api, email: str, role: str, account: str = "acme") -> httpx.AsyncClient:
    """A new user of ``account`` with ``role``, logged in: its browser."""
    await add_user(api, email, role, account)
    return browser(api, await login_token(api, email))
