"""``relay queue``: the mail queue, messages and per-recipient delivery state."""

from __future__ import annotations

from typing import Any

import click

from relay.cli.base import Ctx, command, table
from relay.cli.progress import progress
from relay.services.queue_admin import QueueAdmin, check_retry
from relay.vocab import STATES, Invalid


@click.group("queue")
def queue() -> None:
    """The mail queue: messages and per-recipient delivery state."""


@command(queue, "list")
@click.option("--state", type=click.Choice(STATES), default=None,
              help="Only messages with a recipient in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="At most this many, newest first.")
def queue_list(ctx: Ctx, state: str | None, limit: int):
    """Messages in the store, newest first, with their recipients."""
    msgs = ctx.store.queue.list_messages(state, limit)
    data = [{"id": m.id, "state": m.state, "mail_from": m.mail_from, "subject": m.subject, "ip_pool": m.ip_pool,
             "created_at": m.created_at,
             "recipients": [{"address": r.address, "state": r.state} for r in m.recipients]}
            for m in msgs]
    return data, table([[m.id, m.state, m.created_at.strftime("%Y-%m-%d %H:%M:%S"), m.mail_from or "<>",
                         ",".join(r.address for r in m.recipients)] for m in msgs],
                       ["QUEUE ID", "STATE", "CREATED", "FROM", "TO"])


@command(queue, "show")
@click.argument("queue_id")
def queue_show(ctx: Ctx, queue_id: str):
    """One message: its recipients' states and attempts, and its events."""
    m = ctx.store.queue.show(queue_id)
    lines = [f"{m.id}  from <{m.mail_from}>  pool {m.ip_pool}  size {m.size}  created {m.created_at:%Y-%m-%d %H:%M:%S}",
             f"  subject: {m.subject}", "  recipients:"]
    lines += [f"    {r.address}: {r.state} (attempts {r.attempts}){' - ' + r.last_reply if r.last_reply else ''}"
              for r in m.recipients]
    lines.append("  events:")
    lines += [f"    {e.at:%H:%M:%S} {e.type:10} {e.recipient or ''} {e.upstream or ''} {e.code or ''} {e.reply or ''}".rstrip()
              for e in m.events]
    return m, "\n".join(lines)


@command(queue, "retry")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every deferred message.")
def queue_retry(ctx: Ctx, queue_ids: tuple[str, ...], all_: bool):
    """Make deferred recipients due now (of the given messages, or --all)."""
    check_retry(queue_ids, all_)
    qa = QueueAdmin(ctx.store)
    if all_:
        n = qa.retry(None, every=True)
    else:
        n = sum(qa.retry(None, [qid]) for qid in progress(queue_ids, label="retrying", as_json=ctx.as_json))
    data: dict[str, Any] = {"success": True, "recipients": n}
    if len(queue_ids) > 1:
        data["messages"] = len(queue_ids)
    return data, f"{n} recipient(s) due now"


@command(queue, "delete")
@click.argument("queue_ids", nargs=-1)
@click.option("--state", type=click.Choice(STATES), default=None,
              help="Every message with a recipient in this state (instead of queue ids).")
def queue_delete(ctx: Ctx, queue_ids: tuple[str, ...], state: str | None):
    """Delete messages (body, recipients and events) from the store."""
    if bool(queue_ids) == bool(state):
        raise Invalid("give queue ids or --state", field="queue_id")
    ids = list(queue_ids) or [m.id for m in ctx.store.queue.list_messages(state, limit=10_000_000)]
    qa = QueueAdmin(ctx.store)
    for qid in progress(ids, label="deleting", as_json=ctx.as_json):
        qa.delete(None, qid)
    if len(queue_ids) == 1:
        return {"success": True, "deleted": queue_ids[0]}, f"message {queue_ids[0]} deleted"
    return {"success": True, "deleted": ids, "count": len(ids)}, f"{len(ids)} message(s) deleted"
