"""``/messages``: the account's messages, searched by recipient, subject, queue id, Message-ID or tag;
``/messages/{id}``: each recipient's timeline of events, and the raw header section."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from relay.api.common import check_id
from relay.api.messages import decode_cursor, encode_cursor
from relay.api.deps import MessagesDep
from relay.dashboard.auth import Current
from relay.dashboard.web import REFUSALS, PageError, page, refusal
from relay.store.tracking import TrackedEvent, TrackedMessage
from relay.vocab import STATES, NotFound

router = APIRouter(include_in_schema=False)
PAGE = 50
NOT_FOUND = "Message not found"


@router.get("/messages", response_class=HTMLResponse)
async def messages(request: Request, viewer: Current, log: MessagesDep,
                   q: Annotated[str, Query(max_length=320)] = "", status: str = "",
                   cursor: Annotated[str, Query(max_length=200)] = "", sandbox: bool = False) -> HTMLResponse:
    """Newest first, 50 a page; the search box takes any of the things a message is known by; sandbox
    sends (stored, never delivered) on their own."""
    shown = {"q": q, "status_filter": status, "sandbox": sandbox, "states": STATES}
    try:
        after = decode_cursor(cursor) if cursor else None
        found = await log.page(viewer.ident.account_id, status=status if status in STATES else None, after=after,
                               limit=PAGE + 1, query=q.strip() or None, sandbox=sandbox)
    except REFUSALS as exc:
        err = refusal(exc)
        return page(request, "messages.html", viewer, status=err.status, title="Messages", error=err.message,
                    found=[], next_cursor=None, **shown)
    more = len(found) > PAGE
    found = found[:PAGE]
    return page(request, "messages.html", viewer, title="Messages", found=found,
                next_cursor=encode_cursor(found[-1]) if more else None, **shown)


def timelines(msg: TrackedMessage) -> dict[str, list[TrackedEvent]]:
    """Each recipient's events, oldest first (an event naming no recipient belongs to every one)."""
    out: dict[str, list[TrackedEvent]] = {r.address: [] for r in msg.recipients}
    for e in msg.events:
        for address, events in out.items():
            if e.recipient is None or e.recipient == address:
                events.append(e)
    return out


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message(request: Request, message_id: str, viewer: Current, log: MessagesDep) -> HTMLResponse:
    """Another account's message is not found, exactly like one that does not exist."""
    try:
        check_id(message_id, NOT_FOUND)
        msg = await log.get(viewer.ident.account_id, message_id)
        headers = await log.headers(viewer.ident.account_id, message_id)
    except (NotFound, *REFUSALS):
        raise PageError(404, NOT_FOUND) from None
    return page(request, "message.html", viewer, title=msg.subject or msg.id, msg=msg, headers=headers,
                timelines=timelines(msg))
