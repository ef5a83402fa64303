"""The active queue (Postfix's qmgr model): the small in-memory queue of messages ready to be tried,
fed by the pipeline (fresh mail, at commit) and by the scheduler's poller (mail that fell due).

A message is in flight from :meth:`push` until :meth:`done`. Recipients of a message that fall due
while another attempt of the same message is in flight are parked and queued when it ends (their
lease is ours; dropping them would strand it).
"""

from __future__ import annotations

import asyncio

from relay.store.queue import QueuedMessage


class ActiveQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[QueuedMessage] = asyncio.Queue()
        self.inflight: set[str] = set()
        self._parked: dict[str, QueuedMessage] = {}

    def push(self, msg: QueuedMessage) -> None:
        if msg.id in self.inflight:
            parked = self._parked.get(msg.id)
            if parked is None:
                self._parked[msg.id] = msg
            else:
                parked.recipients.extend(r for r in msg.recipients if r not in parked.recipients)
                parked.tries.update(msg.tries)
            return
        self.inflight.add(msg.id)
        self._queue.put_nowait(msg)

    async def get(self) -> QueuedMessage:
        return await self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def done(self, msg_id: str) -> None:
        """The attempt of ``msg_id`` ended: queue what was parked meanwhile."""
        self.inflight.discard(msg_id)
        parked = self._parked.pop(msg_id, None)
        if parked is not None:
            self.push(parked)
