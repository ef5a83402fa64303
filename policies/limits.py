"""``limits``: the seed limits per message.

- RCPT: at most ``max_recipients`` envelope recipients (default 100; on the HTTP API the envelope
  may hold ``max_to + max_cc + max_bcc``). Recipients past it get ``452 4.5.3``: RFC 5321 clients
  send the message to those accepted and retry the rest later.
- DATA: at most ``max_to`` To (100), ``max_cc`` Cc (50) and ``max_bcc`` Bcc (50) addresses in the
  headers (``550 5.5.3``), a Subject of at most ``max_subject_length`` characters (998,
  ``550 5.6.0``), and a size of at most ``smtp.max_message_size`` bytes (``552 5.3.4``; SMTP already
  advertises it with SIZE and refuses a larger DATA itself, this covers the HTTP API).

HTTP: 400 for all of them.
"""

from __future__ import annotations

import email.utils
from typing import Any

from policies.options import Options
from policies.spec import SIZE, PolicyServices, Verdict


class LimitsPolicy:
    KEYS = ("max_recipients", "max_to", "max_cc", "max_bcc", "max_subject_length")

    def __init__(self, options: dict[str, Any], services: PolicyServices | None = None) -> None:
        o = Options("limits", options, self.KEYS)
        self.max_recipients = o.int("max_recipients", 100, minimum=1)
        self.max_to = o.int("max_to", 100, minimum=1)
        self.max_cc = o.int("max_cc", 50, minimum=0)
        self.max_bcc = o.int("max_bcc", 50, minimum=0)
        self.max_subject_length = o.int("max_subject_length", 998, minimum=1)
        self.services = services

    def envelope_limit(self, listener: str) -> int:
        if listener == "api":
            return max(self.max_recipients, self.max_to + self.max_cc + self.max_bcc)
        return self.max_recipients

    async def on_rcpt(self, ctx: Any, recipient: str) -> Verdict | None:
        limit = self.envelope_limit(ctx.listener)
        if len(ctx.recipients) >= limit:
            return Verdict.tempfail(452, "4.5.3", "Too many recipients", http_status=400,
                                    reason=f"more than {limit} envelope recipients")
        return None

    async def on_data(self, ctx: Any, message: Any) -> Verdict | None:
        max_size = self._max_size()
        size = ctx.extra.get(SIZE)
        if max_size and size is not None and size > max_size:
            return Verdict.reject(552, "5.3.4", "Message size exceeds fixed maximum message size", http_status=400,
                                  reason=f"{size} bytes > {max_size}")
        for header, limit in (("To", self.max_to), ("Cc", self.max_cc), ("Bcc", self.max_bcc)):
            values = [str(v) for v in message.get_all(header, [])]
            count = len([a for _, a in email.utils.getaddresses(values) if a])
            if count > limit:
                return Verdict.reject(550, "5.5.3", "Too many recipients", http_status=400,
                                      reason=f"{count} {header} addresses > {limit}")
        subject = message.get("Subject")
        if subject is not None and len(str(subject)) > self.max_subject_length:
            return Verdict.reject(550, "5.6.0", "Subject too long", http_status=400,
                                  reason=f"subject of {len(str(subject))} characters > {self.max_subject_length}")
        return None

    def _max_size(self) -> int | None:
        return self.services.max_message_size() if self.services is not None else None
