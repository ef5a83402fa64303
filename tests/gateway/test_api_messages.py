"""Message tracking over real HTTP: per-recipient state, events, filters and cursor pages."""

from __future__ import annotations

import asyncio

from tests.support.api import Api, send_body
from tests.conftest import wait_for
from tests.support.replies import REFUSED

OK, BAD_REQUEST, FORBIDDEN, NOT_FOUND, CONFLICT = 200, 400, 403, 404, 409


async def test_message_shows_per_recipient_state_and_events(api: Api):
    api.sink.rcpt_replies["nobody@dest.org"] = "550 5.1.1 No such user"
    r = await api.client.post("/api/v1/send", json=send_body(
        api.p, to=[{"email": "user@dest.org"}, {"email": "nobody@dest.org"}], tags=["welcome"],
        metadata={"user_id": "42"}))
    mid = r.json()["message_id"]

    async def states() -> dict[str, str]:
        msg = (await api.client.get(f"/api/v1/messages/{mid}")).json()["message"]
        return {x["email"]: x["status"] for x in msg["recipients"]}

    for _ in range(200):
        if await states() == {"user@dest.org": "delivered", "nobody@dest.org": "bounced"}:
            break
        await asyncio.sleep(0.05)
    msg = (await api.client.get(f"/api/v1/messages/{mid}")).json()["message"]
    assert msg["status"] == "delivered" and msg["tags"] == ["welcome"] and msg["metadata"] == {"user_id": "42"}
    assert msg["from"] == api.p.alias and msg["subject"] == "Hello" and msg["source"] == "api"
    bounced = next(x for x in msg["recipients"] if x["email"] == "nobody@dest.org")
    assert (bounced["last_code"], bounced["last_reply"]) == (REFUSED, "5.1.1 No such user")
    types = [(e["type"], e["recipient"]) for e in msg["events"]]
    assert ("accepted", "user@dest.org") in types and ("delivered", "user@dest.org") in types
    assert ("bounced", "nobody@dest.org") in types

    r = await api.client.get("/api/v1/messages/msg_0000000000000000")
    assert (r.status_code, r.json()) == (NOT_FOUND, {"success": False, "error": "Message not found"})


async def test_list_filters_and_cursor_pages(api: Api):
    ids = []
    for i in range(5):
        r = await api.client.post("/api/v1/send", json=send_body(api.p, subject=f"n{i}",
                                                                 tags=["even" if i % 2 == 0 else "odd", "all_of_them"]))
        ids.append(r.json()["message_id"])
    await wait_for(lambda: len([x for x in api.sink.received if x.mail_from == api.p.alias]) == 5)

    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/api/v1/messages", params=params)).json()
        seen += [m["message_id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once

    page = (await api.client.get("/api/v1/messages", params={"tag": "even"})).json()
    assert sorted(m["subject"] for m in page["messages"]) == ["n0", "n2", "n4"]
    page = (await api.client.get("/api/v1/messages", params={"tag": "all"})).json()
    assert page["messages"] == []  # a tag matches whole, "_" is no wildcard
    page = (await api.client.get("/api/v1/messages", params={"tag": "all_of_them"})).json()
    assert len(page["messages"]) == 5

    async def delivered() -> int:
        return len((await api.client.get("/api/v1/messages", params={"status": "delivered"})).json()["messages"])

    for _ in range(100):
        if await delivered() == 5:
            break
        await asyncio.sleep(0.05)
    assert await delivered() == 5
    assert (await api.client.get("/api/v1/messages", params={"status": "bounced"})).json()["messages"] == []
    future = "2999-01-01T00:00:00Z"
    assert (await api.client.get("/api/v1/messages", params={"since": future})).json()["messages"] == []
    r = await api.client.get("/api/v1/messages", params={"cursor": "garbage"})
    assert (r.status_code, r.json()) == (BAD_REQUEST, {"success": False, "error": "Validation failed",
                                                        "details": {"fieldErrors": {"cursor": ["invalid cursor"]}}})
    r = await api.client.get("/api/v1/messages", params={"status": "lost"})
    assert r.status_code == BAD_REQUEST and "status" in r.json()["details"]["fieldErrors"]


async def test_other_accounts_messages_are_invisible(api: Api):
    mid = (await api.client.post("/api/v1/send", json=send_body(api.p))).json()["message_id"]
    api.gw.admin.create_account("globex")
    key, _ = api.gw.admin.create_key("globex", ["send", "admin"])
    async with api.as_key(key) as other:
        assert (await other.get(f"/api/v1/messages/{mid}")).status_code == NOT_FOUND
        assert (await other.get("/api/v1/messages")).json()["messages"] == []
        assert (await other.get("/api/v1/aliases")).json()["aliases"] == []
        alias = api.gw.store.directory.find_alias(api.p.alias)
        key2, _ = api.gw.admin.create_key("globex", ["aliases"])
    async with api.as_key(key2) as other_aliases:
        assert (await other_aliases.get(f"/api/v1/aliases/{alias.id}")).status_code == NOT_FOUND
        assert (await other_aliases.delete(f"/api/v1/aliases/{alias.id}")).status_code == NOT_FOUND


async def test_retry_and_delete_a_message_as_relay_queue_does(api: Api):
    """The one queue service behind ``relay queue retry|delete`` and these routes: an admin key of
    the account retries and deletes its own message; another account, or a send-only key, cannot."""
    api.gw.scheduler.retry_base = api.gw.scheduler.retry_max = 3600.0  # deferred stays deferred
    api.sink.rcpt_replies["later@dest.org"] = "451 4.2.0 Try again later"
    mid = (await api.client.post("/api/v1/send", json=send_body(
        api.p, to=[{"email": "later@dest.org"}]))).json()["message_id"]

    def recipient():
        return api.gw.store.queue.show(mid).recipients[0]

    await wait_for(lambda: recipient().state == "deferred", timeout=10)
    due = recipient().next_attempt_at
    api.gw.admin.create_account("globex")
    key, _ = api.gw.admin.create_key("globex", ["send", "admin"])
    async with api.as_key(key) as other:  # another account: 404, nothing changed
        assert (await other.post(f"/api/v1/messages/{mid}/retry")).json() == {
            "success": False, "error": "Message not found"}
        assert (await other.delete(f"/api/v1/messages/{mid}")).status_code == NOT_FOUND
    assert recipient().next_attempt_at == due
    send_only, _ = api.gw.admin.create_key(api.p.account, ["send"])
    async with api.as_key(send_only) as sender:
        assert (await sender.delete(f"/api/v1/messages/{mid}")).status_code == FORBIDDEN

    r = await api.client.post(f"/api/v1/messages/{mid}/retry")
    assert (r.status_code, r.json()) == (OK, {"success": True, "recipients": 1})
    assert recipient().next_attempt_at < due
    await wait_for(lambda: recipient().attempts == 2 and recipient().state == "deferred", timeout=10)
    r = await api.client.delete(f"/api/v1/messages/{mid}")
    assert (r.status_code, r.json()) == (OK, {"success": True, "deleted": mid})
    assert (await api.client.get(f"/api/v1/messages/{mid}")).status_code == NOT_FOUND
    assert (await api.client.post(f"/api/v1/messages/{mid}/retry")).status_code == NOT_FOUND


async def test_a_message_a_node_holds_for_an_attempt_is_not_deleted(api: Api):
    import datetime as dt

    import sqlalchemy as sa

    from relay.store import models as m, utcnow
    api.sink.rcpt_replies["later@dest.org"] = "451 4.2.0 Try again later"
    mid = (await api.client.post("/api/v1/send", json=send_body(
        api.p, to=[{"email": "later@dest.org"}]))).json()["message_id"]
    await wait_for(lambda: api.gw.store.queue.show(mid).recipients[0].state == "deferred", timeout=10)
    with api.gw.store.sessions.begin() as s:  # as a node that claimed it for an attempt
        s.execute(sa.update(m.Recipient).where(m.Recipient.message_id == mid).values(
            lease_owner="node-x", lease_until=utcnow() + dt.timedelta(minutes=1)))
    r = await api.client.delete(f"/api/v1/messages/{mid}")
    assert (r.status_code, r.json()) == (CONFLICT, {
        "success": False, "error": "The message is being delivered right now; try again in a moment"})
    assert api.gw.store.queue.show(mid).id == mid
