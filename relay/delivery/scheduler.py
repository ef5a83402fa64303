"""The queue manager (Postfix's qmgr): a small in-memory active queue over the durable one.

Fresh mail is pushed straight into the active queue by the pipeline after its commit (the body is
still in memory, so nothing is read back). The store is polled only for deferred work that is due
and for work whose lease expired (a crashed process or node). Outcomes and the dot markers
are written in group commits; a released final dot is journaled at once (relay.delivery.journal).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from typing import Any, Awaitable, Callable, Protocol

from relay.ops import metrics
from relay.ops.config import Settings
from relay.aio import wait_event
from relay.delivery.active import ActiveQueue
from relay.delivery.journal import DotJournal
from relay.delivery import probe as probing
from relay.delivery.connections import SessionPool
from relay.delivery.policy import backoff, is_hard_bounce, outcome_of
from relay.delivery.router import Router
from relay.delivery.target import DeliveryTarget, DotHooks, UpstreamUnavailable
from relay.store import Store, utcnow
from relay.store.queue import Outcome, QueuedMessage
from relay.store.runner import DbRunner, StoreWriter
from relay.vocab import Context

log = logging.getLogger(__name__)


class OutcomeHooks(Protocol):
    """The policies' after_delivery / after_bounce hooks (a relay.submission.policyset.PolicySet)."""

    def has(self, hook: str) -> bool: ...

    async def notify(self, hook: str, *args: Any) -> None: ...


Bounce = Callable[[QueuedMessage, list[Outcome]], Awaitable[None]]  # the bounce stage (relay.events.bounces)


class Scheduler:
    def __init__(self, *, store: Store, runner: DbRunner, writer: StoreWriter, router: Router, active: ActiveQueue,
                 retry_base: float, retry_max: float, lease: float, poll_interval: float, concurrency: int,
                 journal: DotJournal, markers: bool = True, orphans: tuple[DotJournal, ...] = (),
                 bounce: Bounce | None = None, policies: OutcomeHooks | None = None,
                 clock: Callable[[], dt.datetime] = utcnow, rand: random.Random | None = None) -> None:
        self.store = store
        self.runner = runner
        self.journal = journal
        self.markers = markers  # the store's dot markers: for other nodes (PostgreSQL)
        self.orphans = orphans  # journals of workers that no longer exist (fewer workers than before)
        self.router = router
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.lease = lease
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.bounce = bounce
        self.clock = clock
        self.rand = rand or random.Random()
        self.active = active
        self.writer = writer
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._next_due: dt.datetime | None = None
        self._stopping = False
        self._releasing: set[asyncio.Task[None]] = set()  # release_held updates under way
        self._attempting: set[str] = set()  # messages a worker is attempting now (kept at a graceful stop)
        self.policies = policies

    def apply(self, settings: Settings) -> None:
        """A reload: the retry schedule, the poll interval, and the upstreams' timeouts."""
        d = settings.delivery
        self.retry_base, self.retry_max, self.poll_interval = d.retry_base, d.retry_max, d.poll_interval
        for up in self.router.all_upstreams():
            up.set_timeouts(d.connect_timeout, d.command_timeout)

    # -- feeding ------------------------------------------------------------------------------
    def push(self, msg: QueuedMessage) -> None:
        self.active.push(msg)

    @property
    def park_seconds(self) -> float:
        """How long mail behind open breakers waits at most (a fallback: a successful probe releases it)."""
        return max(self.retry_max, 20 * self.router.cooldown)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping

    @property
    def inflight(self) -> set[str]:
        return self.active.inflight

    def wake(self) -> None:
        """Look at the store now (``relay queue retry`` through the API, tests)."""
        self._wake.set()

    async def recover(self) -> int:
        """Send again what this node left between a final dot and its reply (its dot journal and
        markers: possible duplicates, never assumed delivered), release its other claims, and start
        a fresh journal. At start, and again at the end of a graceful stop. Returns how many."""
        resent = await self.runner.write(self.store.queue.recover, self.store.node_id, self.journal.entries())
        self.journal.reset()
        for orphan in self.orphans:
            resent += await self.runner.write(self.store.queue.recover, orphan.owner, orphan.entries())
            orphan.reset()
        self.orphans = ()
        return len(resent)  # (each logged and counted by the store: relay_possible_duplicates_total)

    async def start(self) -> None:
        await self.recover()
        self.writer.start()
        self._tasks = [asyncio.create_task(self._worker(), name=f"delivery-{i}") for i in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._poller(), name="delivery-poller"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="delivery-heartbeat"))
        self._tasks.append(asyncio.create_task(self._reaper(), name="delivery-reaper"))
        self._tasks.append(asyncio.create_task(self._prober(), name="delivery-prober"))

    async def hand_back(self) -> int:
        """The start of a graceful stop: no new claim and no new attempt; this node's claims on mail
        it is not attempting right now go back to the store at once, for the other nodes' next poll
        (one alone delivers them at its restart). Returns how many recipients went back."""
        self._stopping = True
        for t in self._tasks:
            if t.get_name() == "delivery-poller":
                t.cancel()
        n: int = await self.runner.write(self.store.queue.hand_back, self.store.node_id, frozenset(self._attempting))
        log.info("stopping: %d recipient(s) handed back, %d message(s) in flight finish first", n,
                 len(self._attempting))
        return n

    async def stop(self, timeout: float = 10.0) -> None:
        """Hand back what waits (:meth:`hand_back`, unless done already), let the attempts in flight
        finish (bounded by *timeout*), then stop. The caller releases what is left (recover)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._stopping:
            try:
                await self.hand_back()
            except Exception:  # noqa: BLE001 - the final recover (or the lease's expiry) releases them
                log.exception("could not hand back this node's mail")
        while self._attempting and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.writer.close()
        for up in self.router.all_upstreams():
            up.close_idle()

    # -- loops --------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            msg = await self.active.get()
            if self._stopping:
                continue
            self._attempting.add(msg.id)  # (the active queue holds one attempt per message)
            try:
                await self.deliver(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("delivery failed unexpectedly", extra={"queue_id": msg.id})
                await self._defer_after_fault(msg, exc)
            finally:
                self._attempting.discard(msg.id)
                self.active.done(msg.id)

    async def _poller(self) -> None:
        while True:
            timeout = self.poll_interval
            if self._next_due is not None:
                timeout = max(0.0, min(timeout, (self._next_due - self.clock()).total_seconds()))
            await wait_event(self._wake, timeout)
            self._wake.clear()
            self._next_due = None
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue poll failed")

    async def _poll_once(self) -> None:
        claimed = await self.runner.write(self.store.queue.claim_due, self.store.node_id, self.lease, 500)
        for msg in claimed:
            self.push(msg)
        if len(claimed) >= 500:
            self._wake.set()

    async def _heartbeat(self) -> None:
        """Renew this node's leases every third of a lease while it holds work, on its own clock: not
        the poller's, which may wait longer than a lease (``poll_interval``), nor stop with it (the
        drain of a graceful stop). A lease that lapses while its node still works lets another node
        take the mail over and send it a second time."""
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self.inflight:
                continue
            try:
                await self.runner.write(self.store.queue.renew_leases, self.store.node_id, self.lease)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next beat tries again (within the lease)
                log.exception("lease renewal failed")

    async def _prober(self) -> None:
        """Probe the upstreams whose breaker is open once its cooldown is over, with a connection test
        (EHLO, TLS, AUTH; no mail): the mail parked behind the breaker stays untouched meanwhile, and
        becomes due (release_held) the moment a probe succeeds."""
        while True:
            await asyncio.sleep(min(1.0, self.router.cooldown / 4))
            try:
                for pool, up in self.router.due_probes():
                    task = asyncio.get_running_loop().create_task(self._probe(pool, up))
                    self._releasing.add(task)
                    task.add_done_callback(self._releasing.discard)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("breaker probe round failed")

    async def _probe(self, pool: str, up: DeliveryTarget) -> None:
        if not isinstance(up, SessionPool):  # (router.due_probes gives session pools only)
            return
        try:
            result = await probing.probe(up)
        except Exception:  # noqa: BLE001 - a probe that fails for any reason leaves the breaker open
            result = {"success": False, "error": "probe failed"}
        if result.get("success"):
            if self.router.success(up):
                self.release_held(pool)
        else:
            self.router.failure(up)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(15)
            for up in self.router.all_upstreams():
                up.close_idle(up.idle_timeout)

    # -- one delivery attempt ----------------------------------------------------------------
    async def deliver(self, msg: QueuedMessage) -> None:
        """One attempt of a message: its upstreams in order until one takes it, then the outcomes."""
        now = self.clock()
        pending = list(msg.recipients)
        outcomes: list[Outcome] = []
        last: UpstreamUnavailable | None = None
        last_upstream: str | None = None  # who gave the last refusal (the metrics' label for deferrals)
        journaled: list[int] = []  # dot-journal generations, settled once the outcomes are committed
        upstreams = self.router.order(msg.ip_pool, msg.account_id, msg.upstream_id)
        for up in upstreams:
            started = time.perf_counter()
            try:
                result = await up.send(msg.mail_from, pending, msg.body, self._on_dot(msg, up.name, journaled))
            except UpstreamUnavailable as exc:
                metrics.upstream_transaction(msg.ip_pool, up.name, time.perf_counter() - started, "failed")
                last, last_upstream = exc, up.name
                pending = self._refused(msg, up, exc, pending, outcomes, now)
                if not pending:
                    break
                continue
            except Exception as exc:  # a fault (ours or a library's): this attempt failed, nothing is assumed
                log.exception("delivery attempt failed unexpectedly", extra={"queue_id": msg.id, "upstream": up.name})
                metrics.upstream_transaction(msg.ip_pool, up.name, time.perf_counter() - started, "failed")
                last = UpstreamUnavailable(None, f"local error while delivering ({type(exc).__name__}); will retry")
                last_upstream = up.name
                break
            metrics.upstream_transaction(msg.ip_pool, up.name, time.perf_counter() - started, "ok")
            if self.router.success(up):
                self.release_held(msg.ip_pool)
            outcomes += [self._outcome(msg, rcpt, code, reply, up.name, now)
                         for rcpt, (code, reply) in result.results.items()]
            pending = []
            break
        outcomes += self._unsent(msg, pending, bool(upstreams), last, now)
        await self._finish(msg, outcomes, journaled, last_upstream)

    def release_held(self, pool: str) -> None:
        """``pool`` is back (a breaker closed, or it got its first upstream): the mail held back while
        nothing could carry it is due at once (one UPDATE; the poller then claims it in its usual batches)."""
        async def release() -> None:
            try:
                n = await self.runner.write(self.store.queue.release_held, pool)
            except Exception:  # noqa: BLE001 - the mail stays due at its own time: nothing is lost
                log.exception("could not release the mail held back", extra={"pool": pool})
                return
            if n:
                log.info("mail held back by a down pool is due again", extra={"pool": pool, "recipients": n})
                self.wake()

        task = asyncio.get_running_loop().create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _defer_after_fault(self, msg: QueuedMessage, exc: Exception) -> None:
        """An unexpected error around an attempt: its recipients are deferred with backoff (the
        attempt counts, so a fault that repeats ends in a bounce at max_age), never left leased."""
        reply = f"local error while delivering ({type(exc).__name__}); will retry"
        now = self.clock()
        try:
            await self.writer.record([self._outcome(msg, r, 451, reply, None, now, force_defer=True)
                                      for r in msg.recipients])
        except Exception:
            log.exception("could not defer after a delivery fault", extra={"queue_id": msg.id})

    def _on_dot(self, msg: QueuedMessage, upstream: str, journaled: list[int]) -> Callable[[list[str]], DotHooks]:
        def on_dot(accepted: list[str]) -> DotHooks:
            # the journal's write goes with the dot's release; the store's marker right after
            write, gen = self.journal.prepare([(msg.id, a, msg.tries.get(a, 0)) for a in accepted])
            journaled.append(gen)
            if not self.markers:
                return DotHooks(write, _nothing)
            items = [(msg.id, a, upstream) for a in accepted]
            return DotHooks(write, lambda: asyncio.ensure_future(self._mark(items)))

        return on_dot

    def _refused(self, msg: QueuedMessage, up: DeliveryTarget, exc: UpstreamUnavailable, pending: list[str],
                 outcomes: list[Outcome], now: dt.datetime) -> list[str]:
        """An upstream did not take the message: recipients it refused for good bounce (not retried);
        the rest are still pending for the next upstream."""
        for rcpt, (code, reply) in exc.refused.items():
            outcomes.append(self._outcome(msg, rcpt, code, reply, up.name, now))
        self.router.failure(up)
        log.info("upstream did not take the message", extra={
            "queue_id": msg.id, "account": msg.account_id, "alias": None, "pool": msg.ip_pool,
            "upstream": up.name, "reply": exc.reply, "code": exc.code})
        return [r for r in pending if r not in exc.refused]

    def _unsent(self, msg: QueuedMessage, pending: list[str], tried: bool, last: UpstreamUnavailable | None,
                now: dt.datetime) -> list[Outcome]:
        """Outcomes of the recipients no upstream took."""
        if not pending:
            return []
        wait = self._breaker_wait(msg.ip_pool) if not tried else None
        if wait is not None and self.router.probed(msg.ip_pool):
            # parked: the prober closes the breaker and makes this mail due (release_held); until
            # then it costs no claim, no write (the horizon is only a fallback)
            wait = max(wait, self.park_seconds)
        if wait is not None:
            # Nothing was tried: every upstream of the pool is marked down. Not an attempt (the
            # retry schedule does not advance); the recipients wait for the breaker's next probe.
            reply = f"no upstream available in pool {msg.ip_pool!r}: all marked down, waiting for the next probe"
            return [self._outcome(msg, rcpt, 451, reply, None, now, force_defer=True, delay=wait) for rcpt in pending]
        if last is None or not last.reply:
            last = UpstreamUnavailable(None, f"no upstream available in pool {msg.ip_pool!r}")
        if last.permanent and last.code:
            return [self._outcome(msg, rcpt, last.code, last.reply, None, now) for rcpt in pending]
        return [self._outcome(msg, rcpt, last.code or 451, last.reply, None, now, force_defer=True)
                for rcpt in pending]

    async def _finish(self, msg: QueuedMessage, outcomes: list[Outcome], journaled: list[int],
                      last_upstream: str | None) -> None:
        """Commit the outcomes, settle the journal, then the bounce stage and the policies' hooks."""
        await self.writer.record(outcomes)
        for gen in journaled:
            self.journal.settle(gen)
        for o in outcomes:
            metrics.recipient_outcome(msg.ip_pool, o.upstream or last_upstream, o.state)
            log.info("recipient %s", o.state, extra={"queue_id": msg.id, "account": msg.account_id, "alias": None,
                                                     "pool": msg.ip_pool, "upstream": o.upstream,
                                                     "reply": o.reply, "recipient": o.address, "code": o.code})
        failed = [o for o in outcomes if o.state in ("bounced", "expired")]
        if failed and self.bounce is not None:
            await self.bounce(msg, failed)
        if self.policies is not None:
            await self._notify_policies(self.policies, msg, outcomes)

    async def _mark(self, items: list[tuple[str, str, str]]) -> None:
        """The store's dot marker, for another node taking over this one's leases. Best effort: this
        node's own restart reads its journal."""
        try:
            await self.writer.mark(items)
        except Exception:
            log.exception("could not write the dot marker", extra={"queue_id": items[0][0]})

    @staticmethod
    async def _notify_policies(policies: OutcomeHooks, msg: QueuedMessage, outcomes: list[Outcome]) -> None:
        """The policies' after_delivery / after_bounce hooks (counters only; failures are logged)."""
        delivered = [o for o in outcomes if o.state == "delivered"] if policies.has("after_delivery") else []
        bounced = [o for o in outcomes if o.state in ("bounced", "expired")] if policies.has("after_bounce") else []
        if not delivered and not bounced:
            return
        ctx = Context(listener="delivery", mail_from=msg.mail_from, recipients=list(msg.recipients),
                      extra={"queue_id": msg.id, "account_id": msg.account_id, "ip_pool": msg.ip_pool,
                             "source": msg.source})
        for o in delivered:
            await policies.notify("after_delivery", ctx, o.address, o.upstream)
        for o in bounced:
            hard = o.state == "bounced" and is_hard_bounce(o.code or 0, o.reply or "")
            await policies.notify("after_bounce", ctx, o.address, f"{o.code} {o.reply or ''}".strip(), hard)

    def _breaker_wait(self, pool: str) -> float | None:
        """Seconds to wait when the router gave no upstream for *pool* because all are marked
        down: until the first breaker lets a probe through (a little jitter spreads the waiting
        mail), or a short first-retry delay while a probe is under way. None: the pool has no
        upstream at all, a failure like any other."""
        if not self.router.ip_pools.get(pool):
            return None
        reopens = self.router.reopens_in(pool)
        if reopens is None:
            return backoff(1, self.retry_base, self.retry_max, self.rand)
        return reopens + self.rand.random() * min(self.retry_base, 1.0)

    def _outcome(self, msg: QueuedMessage, rcpt: str, code: int, reply: str, upstream: str | None,
                 now: dt.datetime, force_defer: bool = False, delay: float | None = None) -> Outcome:
        """The recipient's outcome. ``delay``: a deferral that is not an attempt (nothing was
        tried), due again after that many seconds."""
        state = "deferred" if force_defer else outcome_of(code)
        o = Outcome(message_id=msg.id, address=rcpt, state=state, code=code, reply=reply, upstream=upstream,
                    attempted=delay is None)
        if state == "deferred":
            if now >= msg.expires_at:
                o.state = "expired"
                o.reply = f"message expired after retries; last reply: {reply}"
                return o
            if delay is None:
                delay = backoff(msg.attempts + 1, self.retry_base, self.retry_max, self.rand)
            o.next_attempt_at = min(now + dt.timedelta(seconds=delay), msg.expires_at)
            if self._next_due is None or o.next_attempt_at < self._next_due:
                self._next_due = o.next_attempt_at
                self._wake.set()  # re-arm the poller's timer
        return o


def _nothing() -> None:
    return None
