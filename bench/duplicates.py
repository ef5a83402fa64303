#!/usr/bin/env python3
"""Duplicate-window benchmark: how many second copies a SIGKILL costs, on SQLite and PostgreSQL.

    python bench/duplicates.py [--store sqlite --store postgresql] [--kills 10] [--batch 80] [--delay 0.3]
                               [--max-connections 20] [--lease 5] [--admin-url postgresql://...] [--json FILE]

Needs the project's venv (``pip install -e '.[test]'``) and, for ``postgresql``, a server whose admin
URL's user creates and drops the database (``relay_duplicates_<random>``, dropped after).

The upstream commits a message only when it answers the final dot, ``--delay`` seconds after it
(bench/takeover.py's TimedSink over ``tests.support.crash.DiscardingSink``). Each of ``--kills``
rounds submits ``--batch`` messages through node A (10 sessions, trusted listener), SIGKILLs A at a
random instant while it is still accepting and delivering, then lets the queue settle before the
next round, so every copy belongs to one kill:

- ``sqlite``: one node, restarted in place at once (it resends what its dot journal names);
- ``postgresql``: two nodes on one database; B takes A's expired leases over (``[delivery]
  lease_seconds`` = --lease) and resends what A's dot markers name; A is restarted for the next round.

Per kill: dots waiting for their reply at the kill (the upstream's count), the recipients the store
sent again (events "sent again...": each a possible duplicate), the messages that arrived twice
(real duplicates: the upstream had committed them, the gateway had not recorded it), and the ones
lost (accepted, never arrived: must be 0). The duplicate window's length: for each message delivered
once, upstream reply -> the gateway's ``delivered`` event (start of the outcome's group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from takeover import (  # noqa: E402
    Node, TimedSink, create_database, dist, drop_database, free_port, new_master_key, provision, resent_events,
    resent_mids, sigterm_as_interrupt, store_url, submit, table, window,
)

import sqlalchemy as sa  # noqa: E402

from relay.store import models as m  # noqa: E402
from relay.store.queue import PENDING  # noqa: E402


def pending(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return c.scalar(sa.select(sa.func.count()).select_from(m.Recipient)
                            .where(m.Recipient.state.in_(PENDING))) or 0
    finally:
        engine.dispose()


async def settle(url: str, sink: TimedSink, mids: list[str], timeout: float) -> None:
    """Until every accepted message arrived and nothing is pending (every resend done)."""
    end = time.time() + timeout
    while time.time() < end:
        seen = sink.by_mid()
        if all(mid in seen for mid in mids) and await asyncio.to_thread(pending, url) == 0:
            await asyncio.sleep(0.5)  # a resend's copy still on the wire
            return
        await asyncio.sleep(0.3)
    raise SystemExit(f"not settled after {timeout:.0f} s: {await asyncio.to_thread(pending, url)} pending")


async def one_round(k: int, kind: str, a: Node, sink: TimedSink, read_url: str, args: argparse.Namespace,
                    rand: random.Random) -> tuple[dict, list[str]]:
    """Submit a batch through A, SIGKILL A while it accepts and delivers, settle: one kill's figures."""
    resent_before = len(await asyncio.to_thread(resent_events, read_url))
    load = asyncio.create_task(submit(a.ports["relay"], f"kill{k}", args.batch))
    await asyncio.sleep(rand.uniform(0.5, 1.5))
    a.signal(signal.SIGKILL)
    answering = sink.answering
    await asyncio.to_thread(a.wait, 30)
    accepted = await load
    if kind == "sqlite":
        await asyncio.to_thread(a.start)  # in place: it resends what its journal names
    await settle(read_url, sink, accepted, 3 * args.lease + 120)
    seen = sink.by_mid()
    tag = f"<kill{k}-"
    mine = {mid: c for mid, c in seen.items() if mid.startswith(tag)}  # accepted or cut before the 250
    resent = len(await asyncio.to_thread(resent_events, read_url)) - resent_before
    row = {"kill": k, "accepted": len(accepted), "dots_awaiting_reply": answering, "resent": resent,
           "duplicated": sum(1 for c in mine.values() if len(c) > 1),
           # a second final dot, answered or not: each should have been counted as a resend
           "dot_twice": sum(1 for mid, n in sink.dots.items() if mid.startswith(tag) and n > 1),
           # ... and those of them that arrived twice: a duplicate that no counter saw
           "uncounted_duplicates": len({mid for mid, c in mine.items() if len(c) > 1}
                                       - await asyncio.to_thread(resent_mids, read_url)),
           "lost": sum(1 for mid in accepted if mid not in seen)}
    if kind == "sqlite":
        row["possible_duplicates_total"] = a.metric("relay_possible_duplicates_total")
    return row, accepted


async def run_store(args: argparse.Namespace, kind: str) -> dict:
    rand = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"relay-dups-{kind}-"))
    sink = TimedSink(free_port(), args.delay)
    await sink.start()
    dbname = None
    overrides = {"RELAY_DELIVERY_LEASE_SECONDS": str(args.lease)}
    if kind == "postgresql":
        dbname, url = create_database(args.admin_url, "relay_duplicates")
        read_url = store_url(url)
    else:
        url = None
    key = new_master_key()
    a = Node("node-a", tmp, key, url, overrides)
    b = Node("node-b", tmp, key, url, overrides) if kind == "postgresql" else None
    if kind == "sqlite":
        read_url = f"sqlite:///{a.dir / 'data' / 'relay.db'}"
    kills: list[dict] = []
    all_mids: list[str] = []
    try:
        a.dir.mkdir(parents=True)
        await asyncio.to_thread(provision, a.env, sink.port, args.max_connections)
        await asyncio.to_thread(a.start)
        if b is not None:
            await asyncio.to_thread(b.start)
        for k in range(args.kills):
            if a.proc is None:
                await asyncio.to_thread(a.start)
            row, accepted = await one_round(k, kind, a, sink, read_url, args, rand)
            kills.append(row)
            all_mids += accepted
            print(json.dumps({"store": kind, **row}), file=sys.stderr, flush=True)
        out: dict = {"store": kind, "kills": kills}
        dups = [r["duplicated"] for r in kills]
        out["duplicates_per_kill"] = {"min": min(dups), "median": statistics.median(dups), "max": max(dups),
                                      "total": sum(dups)}
        out["resent_total"] = sum(r["resent"] for r in kills)
        out["dots_awaiting_reply_total"] = sum(r["dots_awaiting_reply"] for r in kills)
        out["lost_total"] = sum(r["lost"] for r in kills)
        out["accepted_total"] = len(all_mids)
        survivor = b if b is not None else a
        out["survivor_possible_duplicates_total"] = survivor.metric("relay_possible_duplicates_total")
        out["resend_log_lines"] = sum(n.log_lines("delivering again") for n in (a, b) if n is not None)
        out["window_s"] = dist(await asyncio.to_thread(window, read_url, sink, set(all_mids)))
    finally:
        for node in (a, b):
            if node is not None:
                node.stop()
        await sink.stop()
        if dbname:
            drop_database(args.admin_url, dbname)
        if os.environ.get("KEEP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


async def main_async(args: argparse.Namespace) -> list[dict]:
    return [await run_store(args, kind) for kind in args.store or ["sqlite", "postgresql"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["sqlite", "postgresql"], action="append", help="default: both")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--batch", type=int, default=80, help="messages submitted per round (a kill cuts it short)")
    ap.add_argument("--delay", type=float, default=0.3, help="the upstream's reply this long after the dot")
    ap.add_argument("--max-connections", type=int, default=20, help="to the upstream, per node")
    ap.add_argument("--lease", type=float, default=5.0, help="[delivery] lease_seconds")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sigterm_as_interrupt()
    results = asyncio.run(main_async(args))
    for r in results:
        print(f"\n{r['store']}")
        print(table(r["kills"], ["kill", "accepted", "dots_awaiting_reply", "resent", "dot_twice", "duplicated",
                                       "uncounted_duplicates", "lost"]))
        print(f"duplicates per kill {r['duplicates_per_kill']}; resent {r['resent_total']}, dots awaiting their "
              f"reply at the kills {r['dots_awaiting_reply_total']}, lost {r['lost_total']} of {r['accepted_total']}; "
              f"relay_possible_duplicates_total {r['survivor_possible_duplicates_total']}, "
              f"log lines {r['resend_log_lines']}; reply->outcome window {r['window_s']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
