"""Webhooks: signed POSTs of delivery events, retried with backoff until acknowledged.

Events: ``delivered``, ``deferred``, ``bounced`` (expired included, ``data.status`` says which),
``suppressed`` (a recipient of an HTTP send held back by the suppression list) and ``complained``
(an address put on the suppression list with reason ``complaint``).

Signature (Stripe's scheme): ``X-Relay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." + body)>``; :func:`verify` is the receiver's side. A delivery is acknowledged by any 2xx
answer; anything else (or no answer within ``timeout``) is retried with exponential backoff up to
``max_attempts``, then marked ``failed``. Rows live in the store (``webhook_deliveries``), queued in
the same transaction as the outcomes they report, so events survive a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from typing import Any, Iterable, Sequence

import httpx
from urllib.parse import urlsplit

from relay.aio import wait_event
from relay.delivery.policy import backoff
from relay.ops.targets import Network, default_port, pinned, resolve_checked
from relay.secrets import MasterKey
from relay.store import Store, utcnow
from relay.store.runner import DbRunner
from relay.store.webhooks import Attempt, Result, Subscriptions
from relay.vocab import Context

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs with credentials

SIGNATURE_HEADER = "X-Relay-Signature"
TOLERANCE = 300  # seconds a receiver accepts between the signature's timestamp and its clock


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = TOLERANCE, now: float | None = None) -> bool:
    """The receiver's check: a v1 signature over this body, made within ``tolerance`` seconds."""
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, t, body)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


class WebhookService:
    """The gateway's webhook side: event queueing (from delivery outcomes and the API) and the worker."""

    retry_base = 10.0
    retry_max = 3600.0
    max_attempts = 15  # about a day with the defaults
    poll_interval = 2.0
    refresh_interval = 5.0
    lease = 60.0
    timeout = 10.0
    concurrency = 8

    def __init__(self, *, store: Store, runner: DbRunner, master_key: MasterKey,
                 allow_targets: Sequence[Network] = ()) -> None:
        self.allow_targets = tuple(allow_targets)  # [security] allow_targets: private ranges an account may reach
        self.runner = runner
        self.master_key = master_key
        self.owner = store.node_id
        self.outbox = store.webhook_outbox
        self.store = self.outbox.webhooks
        self._secrets: dict[str, str] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # -- queueing events ------------------------------------------------------------------------
    @property
    def subs(self) -> Subscriptions:
        return self.outbox.subs

    async def emit(self, account_id: str, event: str, items: Iterable[dict[str, Any]]) -> None:
        """Events that are not delivery outcomes (``suppressed``, ``complained``)."""
        subs = self.subs
        if account_id not in subs:
            return
        if await self.runner.write(self.store.enqueue_events, subs, account_id, event, list(items)):
            self._poke()

    async def suppressed(self, ctx: Context, message_id: str | None) -> None:
        """The pipeline's report of the recipients it held back as suppressed (either door): one
        ``suppressed`` event each, with the message's id once it was committed."""
        if ctx.identity is None:
            return
        await self.emit(ctx.identity.account_id, "suppressed", (
            {"message_id": message_id, "recipient": a, "status": "suppressed", "tags": list(ctx.tags or ()),
             "metadata": ctx.metadata or {}} for a in ctx.held_back))

    def wake(self) -> None:
        """Events were queued in the store by another path: look at the queue now."""
        self._poke()

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def refresh(self) -> None:
        self.outbox.subs = await self.runner.read(self.store.subscriptions)

    def forget(self, webhook_id: str) -> None:
        self._secrets.pop(webhook_id, None)

    # -- the worker -----------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.outbox.wake = self._poke  # outcomes' transactions queue events from now on
        self._task = asyncio.create_task(self._run(), name="webhooks")
        return self._task

    async def _run(self) -> None:
        next_refresh = 0.0
        try:
            await self.runner.write(self.store.release, self.owner)
        except Exception:
            log.exception("could not release this node's webhook claims; they expire")
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False, follow_redirects=False) as client:
            while True:
                loop = asyncio.get_running_loop()
                try:
                    if loop.time() >= next_refresh:
                        await self.refresh()
                        next_refresh = loop.time() + self.refresh_interval
                    while await self._round(client):
                        pass
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook round failed")
                assert self._wake is not None
                await wait_event(self._wake, self.poll_interval)
                self._wake.clear()

    async def _round(self, client: httpx.AsyncClient) -> bool:
        """Deliver what is due; True when a full batch was claimed (more may be waiting)."""
        batch = await self.runner.write(self.store.claim_due, self.owner, self.lease, 50, utcnow())
        if not batch:
            return False
        slots = asyncio.Semaphore(self.concurrency)

        async def one(a: Attempt) -> Result:
            async with slots:
                return await self._post(client, a)

        results = await asyncio.gather(*(one(a) for a in batch))
        await self.runner.write(self.store.record, results, utcnow())
        return len(batch) >= 50

    async def _post(self, client: httpx.AsyncClient, a: Attempt) -> Result:
        d = a.delivery
        body = d.payload.encode()
        secret = self._secrets.get(d.webhook_id)
        if secret is None:
            secret = self._secrets[d.webhook_id] = self.master_key.decrypt_str(a.secret_enc, aad=d.webhook_id)
        headers = {"Content-Type": "application/json", "User-Agent": "Relay-Webhooks/1",
                   SIGNATURE_HEADER: signature_header(secret, body), "X-Relay-Event": d.event_type,
                   "X-Relay-Delivery": d.event_id}
        status: int | None = None
        try:
            # checked again at connect time, and the connection goes to the address checked
            parts = urlsplit(a.url)
            checked = await resolve_checked(parts.hostname or "", default_port(a.url), self.allow_targets)
            url, headers["Host"] = pinned(a.url, checked)
            extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
            resp = await client.post(url, content=body, headers=headers, extensions=extensions)
            status = resp.status_code
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # connection refused, timeout, bad URL...
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            return Result(d.id, True, status, None, None)
        attempts = d.attempts + 1
        log.info("webhook delivery failed", extra={"webhook": d.webhook_id, "event": d.event_id,
                                                    "attempts": attempts, "error": error})
        if attempts >= self.max_attempts:
            return Result(d.id, False, status, error, None)
        delay = backoff(attempts, self.retry_base, self.retry_max)
        return Result(d.id, False, status, error, utcnow() + dt.timedelta(seconds=delay))
