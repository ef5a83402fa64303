"""The bounce stage: recipients that failed for good.

A hard bounce (a permanent failure about the address itself: 5.1.x, 5.2.1) is recorded on the
account's suppression list, through the suppression book an enabled policy provides
(:class:`policies.spec.SuppressionBook`; with none, it is not recorded). Then an RFC 3464 DSN goes to
the envelope sender, from the null sender, queued as system mail. A DSN never gets a DSN (Postfix's
bounce daemon).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from policies.spec import SuppressionBook
from relay.delivery.policy import is_hard_bounce
from relay.events import dsn
from relay.store.queue import Outcome, QueuedMessage
from relay.vocab import new_queue_id

log = logging.getLogger(__name__)

SubmitSystem = Callable[..., Awaitable[str]]  # relay.submission.pipeline.Pipeline.submit_system
HARD_BOUNCE = "hard_bounce"  # the suppression reason


class Bouncer:
    def __init__(self, *, hostname: str, submit: SubmitSystem, suppressions: SuppressionBook | None = None) -> None:
        self.hostname = hostname
        self.submit = submit
        self.suppressions = suppressions

    async def __call__(self, msg: QueuedMessage, failed: Sequence[Outcome]) -> None:
        await self.suppress(msg, failed)
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

    async def suppress(self, msg: QueuedMessage, failed: Sequence[Outcome]) -> None:
        """Hard bounces on the account's suppression list (DSNs included: their recipient is the
        account's sender). A failure is logged: the DSN still goes."""
        if self.suppressions is None or not msg.account_id:
            return
        for o in failed:
            if o.state != "bounced" or not is_hard_bounce(o.code or 0, o.reply or ""):
                continue
            try:
                await self.suppressions.record(msg.account_id, o.address, HARD_BOUNCE, o.reply)
            except Exception:
                log.exception("could not record the hard bounce on the suppression list",
                              extra={"queue_id": msg.id, "account": msg.account_id, "recipient": o.address})
