"""The HTTP API's client address: X-Forwarded-For is believed only from a configured proxy, so a
forged header neither escapes an address's lockout nor turns one client into another."""

from __future__ import annotations

import httpx

from tests.conftest import provision

UNAUTHORIZED, TOO_MANY = 401, 429


def wrong(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


async def attempts(gw, key: str, forwarded: list[str]) -> list[int]:
    base = f"http://{gw.settings.api.listen}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        return [(await c.get("/api/v1/usage", headers={"Authorization": f"Bearer {key}",
                                                       "X-Forwarded-For": f})).status_code for f in forwarded]


async def test_a_forged_x_forwarded_for_does_not_escape_the_lockout(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"auth_max_failures": 3, "auth_lockout": 60})
    p = provision(gw, sink.port)
    codes = await attempts(gw, wrong(p.key), [f"198.51.100.{i}" for i in range(1, 6)])
    # a different "client" each time by the header, one peer in truth: locked after three
    assert codes == [UNAUTHORIZED] * 3 + [TOO_MANY] * 2


async def test_a_trusted_proxy_names_the_client(gateway_factory, sink_factory):
    sink = await sink_factory()
    gw = await gateway_factory(smtp={"auth_max_failures": 3, "auth_lockout": 60},
                               api={"trusted_proxies": ["127.0.0.0/8"]})
    p = provision(gw, sink.port)
    assert await attempts(gw, wrong(p.key), ["198.51.100.7"] * 4) == [UNAUTHORIZED] * 3 + [TOO_MANY]
    # the proxy's other clients are not locked out with the one that failed
    assert await attempts(gw, p.key, ["198.51.100.8"]) == [200]
