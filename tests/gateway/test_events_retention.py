"""Delivery events are kept ``[store] events_retention`` seconds, then pruned in batches by the
housekeeping; 0 keeps them."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from relay.services import housekeeping
from relay.store import models as m
from tests.conftest import free_port, provision


def count_events(gw) -> int:
    with gw.store.sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(m.Event)) or 0


async def test_events_older_than_the_retention_are_pruned(gateway_factory, monkeypatch):
    gw = await gateway_factory(store={"events_retention": 3600})
    provision(gw, free_port())  # the verification mail: accepted, then deferred (no sink) events
    assert count_events(gw) >= 1
    monkeypatch.setattr(housekeeping, "EVENT_BATCH", 1)  # several batches
    kept = await housekeeping.prune_events(gw, now=dt.datetime.now(dt.timezone.utc))
    assert kept == 0  # nothing is an hour old yet
    n = count_events(gw)
    cut = dt.datetime.now(dt.timezone.utc)
    later = cut + dt.timedelta(hours=2)
    assert await housekeeping.prune_events(gw, now=later) >= n
    # every event written before the prune is gone (the running node's retries write new ones)
    with gw.store.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Event).where(m.Event.at < cut)) == 0


async def test_a_zero_retention_keeps_every_event(gateway_factory):
    gw = await gateway_factory(store={"events_retention": 0})
    provision(gw, free_port())
    n = count_events(gw)
    assert await housekeeping.prune_events(gw, now=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)) == 0
    assert count_events(gw) == n
