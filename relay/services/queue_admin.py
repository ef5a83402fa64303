"""The mail queue as people manage it: retry deferred mail now, delete a message. One write path for
``relay queue retry|delete`` (the operator: every account) and ``POST /api/v1/messages/:id/retry``,
``DELETE /api/v1/messages/:id`` (an account's admin: its own messages only, another account's is
:class:`relay.vocab.NotFound`).

Deleting from the API refuses (:class:`relay.vocab.Conflict`) while a node holds the message for an
attempt (a live lease): the attempt would deliver it all the same. The operator's CLI deletes at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.store import Store
from relay.vocab import Invalid


def check_retry(message_ids: Sequence[str], every: bool) -> None:
    if bool(message_ids) == every:
        raise Invalid("give queue ids or --all", field="queue_id")


class QueueAdmin:
    """Synchronous (the CLI calls it directly; the API through its DbRunner)."""

    def __init__(self, store: Store) -> None:
        self.queue = store.queue

    def retry(self, account_id: str | None, message_ids: Sequence[str] = (), *, every: bool = False) -> int:
        """Deferred recipients of ``message_ids`` (or, ``every``, of all the account's messages;
        ``account_id`` None: every account's) become due now. Returns how many."""
        check_retry(message_ids, every)
        if every:
            return self.queue.retry(None, account_id=account_id)
        return sum(self.queue.retry(qid, account_id=account_id) for qid in message_ids)

    def delete(self, account_id: str | None, message_id: str) -> None:
        """Delete one message (body, recipients, events)."""
        self.queue.delete(message_id, account_id=account_id, unless_delivering=account_id is not None)
