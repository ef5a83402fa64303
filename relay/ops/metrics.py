"""Prometheus metrics (the official ``prometheus-client``), cheap enough for the hot path.

Two kinds:

* Process counters and histograms, defined once here in :data:`REGISTRY`. The hot path calls the
  small functions below (``session_opened``, ``message_accepted``, ...); each resolves its label
  child once and caches it, so a call is a dict lookup and an increment, never a query.
* Store-wide and live gauges (queue depth by state, oldest queued age, open sessions, upstream
  health), built at scrape time by :func:`render` from one short read of the store.

With ``smtp.workers > 1`` every worker counts for itself and worker 0 serves ``/metrics``: the
counters are worker 0's, the queue gauges are global (they come from the shared store).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "REGISTRY", "auth_failed", "dkim_signed", "message_accepted", "rejected", "render",
           "recipient_outcome", "reloaded", "session_opened", "store_committed", "upstream_transaction"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SESSIONS = Counter("relay_smtp_sessions", "SMTP connections accepted", ["listener"], registry=REGISTRY)
AUTH_FAILURES = Counter("relay_smtp_auth_failures", "Failed SMTP AUTH attempts (bad or locked out)",
                        ["listener"], registry=REGISTRY)
ACCEPTED = Counter("relay_messages_accepted", "Messages committed to the queue (answered 250/2xx)",
                   ["listener", "pool"], registry=REGISTRY)
REJECTED = Counter("relay_messages_rejected",
                   "Refused commands of a transaction, by phase and reply (code + enhanced status code)",
                   ["listener", "phase", "code", "enhanced"], registry=REGISTRY)
RECIPIENTS = Counter("relay_recipients", "Recipient delivery outcomes: delivered, deferred, bounced, expired",
                     ["pool", "upstream", "outcome"], registry=REGISTRY)
UPSTREAM_SECONDS = Histogram("relay_upstream_transaction_seconds",
                             "One upstream transaction (MAIL to the reply after the final dot), by result",
                             ["pool", "upstream", "result"], buckets=_SLOW, registry=REGISTRY)
DKIM_SECONDS = Histogram("relay_dkim_sign_seconds", "DKIM signing of one message (all its signatures)",
                         buckets=_FAST, registry=REGISTRY)
COMMIT_SECONDS = Histogram("relay_store_commit_seconds", "One group commit of the store (one fsync)",
                           buckets=_FAST + (2.5, 5.0), registry=REGISTRY)
COMMIT_ITEMS = Counter("relay_store_commit_items", "Writes carried by the group commits", registry=REGISTRY)
RESENT = Counter("relay_possible_duplicates", "Recipients delivered again because the final dot went without the "
                 "upstream's reply (a process stopped in between): each may reach the upstream twice", registry=REGISTRY)
RELOADS = Counter("relay_reloads", "Configuration reloads (SIGHUP), by result", ["result"], registry=REGISTRY)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# -- hot path -------------------------------------------------------------------------------------
def session_opened(listener: str) -> None:
    _child(SESSIONS, listener).inc()


def auth_failed(listener: str) -> None:
    _child(AUTH_FAILURES, listener).inc()


def message_accepted(listener: str, pool: str) -> None:
    _child(ACCEPTED, listener, pool).inc()


def rejected(listener: str, phase: str, code: int, enhanced: str) -> None:
    _child(REJECTED, listener, phase, str(code), enhanced).inc()


def recipient_outcome(pool: str, upstream: str | None, outcome: str) -> None:
    _child(RECIPIENTS, pool, upstream or "", outcome).inc()


def upstream_transaction(pool: str, upstream: str, seconds: float, result: str) -> None:
    _child(UPSTREAM_SECONDS, pool, upstream, result).observe(seconds)


def dkim_signed(seconds: float) -> None:
    DKIM_SECONDS.observe(seconds)


def possible_duplicates(n: int) -> None:
    RESENT.inc(n)


def reloaded(ok: bool) -> None:
    RELOADS.labels("ok" if ok else "failed").inc()


def store_committed(seconds: float, items: int) -> None:
    """The :class:`relay.store.runner.StoreWriter` ``on_commit`` callback."""
    COMMIT_SECONDS.observe(seconds)
    COMMIT_ITEMS.inc(items)


# -- scrape time ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One gateway's gauges at scrape time, gathered by the caller (the ``/metrics`` route)."""

    depth: Mapping[str, int]  # recipients in the queue by state (whole store)
    oldest_created_at: dt.datetime | None  # oldest message with a recipient still pending
    sessions_open: Mapping[str, int]  # listener -> open SMTP connections
    upstreams_up: Sequence[tuple[str, str, bool]]  # (ip_pool, upstream, breaker lets deliveries through)


class _Snapshot(Collector):
    def __init__(self, snap: Snapshot, now: dt.datetime) -> None:
        self.snap, self.now = snap, now

    def collect(self) -> Iterable[Any]:
        snap = self.snap
        depth = GaugeMetricFamily("relay_queue_recipients", "Recipients in the queue by state (whole store)",
                                  labels=["state"])
        for state, n in sorted(snap.depth.items()):
            depth.add_metric([state], n)
        yield depth
        oldest = snap.oldest_created_at
        yield GaugeMetricFamily("relay_queue_oldest_age_seconds",
                                "Age of the oldest message with a recipient still queued, deferred or delivering",
                                value=max(0.0, (self.now - oldest).total_seconds()) if oldest else 0.0)
        open_ = GaugeMetricFamily("relay_smtp_sessions_open", "Open SMTP connections", labels=["listener"])
        for name, n in snap.sessions_open.items():
            open_.add_metric([name], n)
        yield open_
        up = GaugeMetricFamily("relay_upstream_up", "1 when the upstream's circuit breaker lets deliveries through",
                               labels=["pool", "upstream"])
        for pool, name, ok in snap.upstreams_up:
            up.add_metric([pool, name], 1.0 if ok else 0.0)
        yield up


def render(snap: Snapshot) -> bytes:
    """The exposition text for ``GET /metrics``: process metrics plus this gateway's gauges."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Snapshot(snap, dt.datetime.now(dt.timezone.utc)))
    return generate_latest(REGISTRY) + generate_latest(scrape)
