"""No API response ever holds an upstream password, a DKIM private key or a whole API key (a new key
appears once, in the answer that creates it)."""

from __future__ import annotations

import re

from tests.support.api import Api, send_body

PASSWORD = "ses-smtp-pa55word-never-shown"


async def test_no_response_leaks_a_secret(api: Api):
    c = api.client
    pool = (await c.post("/api/v1/smtp-pools", json={
        "name": "ses", "host": "127.0.0.1", "port": api.sink.port, "username": "AKIA", "password": PASSWORD,
        "encryption": "none", "ip_pool": "spare"})).json()
    await c.patch(f"/api/v1/smtp-pools/{pool['id']}", json={"password": PASSWORD + "2", "name": "ses2"})
    await c.post(f"/api/v1/smtp-pools/{pool['id']}/test")
    dom = (await c.post("/api/v1/domains", json={"domain": "secrets.example.org"})).json()["domain"]
    await c.post(f"/api/v1/domains/{dom['id']}/dkim/rotate")
    example = api.gw.store.directory.get_domain("example.com")
    await c.post(f"/api/v1/domains/{example.id}/dkim/rotate")
    new_key = (await c.post("/api/v1/keys", json={"scopes": ["send"]})).json()["api_key"]["key"]
    hook = (await c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x"})).json()["webhook"]
    await c.post("/api/v1/send", json=send_body(api.p, idempotency_key="k1"))
    await c.post("/api/v1/send", json=send_body(api.p), headers={"X-Relay-Sandbox": "true"})
    for path in ("/api/v1/smtp-pools", f"/api/v1/smtp-pools/{pool['id']}", "/api/v1/domains",
                 f"/api/v1/domains/{dom['id']}", "/api/v1/keys", "/api/v1/aliases", "/api/v1/messages",
                 "/api/v1/sandbox", "/api/v1/usage", "/api/v1/webhooks", f"/api/v1/webhooks/{hook['id']}",
                 f"/api/v1/webhooks/{hook['id']}/deliveries", "/api/v1/suppressions", "/api/v1/openapi.json"):
        assert (await c.get(path)).status_code == 200, path
    async with api.as_key(api.p.key + "x") as wrong, api.as_key(api.p.key.replace("_", "-")) as mangled:
        await wrong.get("/api/v1/keys")
        await mangled.get("/api/v1/keys")
    await c.post("/api/v1/smtp-pools", json={"name": "x", "host": "h", "port": 70000, "password": PASSWORD,
                                             "encryption": "tls"})

    private_chunks = []
    for d in api.gw.store.directory.list_domains():
        for k in d.keys:
            pem = api.gw.master_key.decrypt_str(k.private_key_enc, aad=d.name)
            body = "".join(line for line in pem.splitlines() if "-----" not in line)
            private_chunks += [body[i:i + 24] for i in range(0, len(body) - 24, 24)]
    assert len(private_chunks) > 20
    secret_part = re.compile(r"rk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")

    assert len(api.responses) > 25
    creations = 0
    for r in api.responses:
        text = r.text
        assert PASSWORD not in text, r.request.url
        assert "PRIVATE KEY" not in text and not any(chunk in text for chunk in private_chunks), r.request.url
        assert hook["secret"] not in text or r.request.url.path == "/api/v1/webhooks" and r.request.method == "POST"
        keys = secret_part.findall(text)
        if keys:
            assert keys == [new_key] and r.request.method == "POST" and r.request.url.path == "/api/v1/keys"
            creations += 1
        assert api.p.key not in text
    assert creations == 1
