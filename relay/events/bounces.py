"""The bounce stage: an RFC 3464 DSN to the envelope sender of recipients that failed for good,
from the null sender, queued as system mail. A DSN never gets a DSN (Postfix's bounce daemon)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from relay.events import dsn
from relay.store.queue import Outcome, QueuedMessage
from relay.vocab import new_queue_id

log = logging.getLogger(__name__)

SubmitSystem = Callable[..., Awaitable[str]]  # relay.submission.pipeline.Pipeline.submit_system


class Bouncer:
    def __init__(self, *, hostname: str, submit: SubmitSystem) -> None:
        self.hostname = hostname
        self.submit = submit

    async def __call__(self, msg: QueuedMessage, failed: Sequence[Outcome]) -> None:
        if not msg.mail_from or msg.source == "dsn" or dsn.is_dsn(msg.body):
            return
        body = dsn.build_dsn(hostname=self.hostname, queue_id=msg.id, original_sender=msg.mail_from,
                             original=msg.body, arrival=msg.created_at.strftime("%a, %d %b %Y %H:%M:%S +0000"),
                             failures=[(o.address, "failed", o.code, o.reply or "") for o in failed],
                             dsn_id=new_queue_id())
        try:
            await self.submit(sender=f"MAILER-DAEMON@{self.hostname}", mail_from="",
                              recipients=[msg.mail_from], raw=body, source="dsn", account_id=msg.account_id,
                              ip_pool=msg.ip_pool)  # the pool of the message it reports on
        except Exception:
            log.exception("could not queue the DSN", extra={"queue_id": msg.id})
