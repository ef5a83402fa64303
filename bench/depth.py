#!/usr/bin/env python3
"""Depth benchmark: a large backlog on a down IP pool must cost nothing while it waits.

    python bench/depth.py [--deferred 100000] [--messages 3000] [--sessions 10] [--idle 60]
                          [--database-url postgresql://...]

Needs Postfix's smtp-sink and smtp-source (Debian package ``postfix``) and the project's venv.

1. Relay (``relay serve`` of this tree, SQLite unless --database-url) with two IP pools: ``default``
   (an smtp-sink) and ``down`` (an upstream on a closed port).
2. Empty store: accepted msgs/s of ``--messages`` from smtp-source on the trusted relay listener.
3. ``--deferred`` messages for the down pool written into the store (as a backlog an outage leaves),
   the gateway restarted: it tries them, marks the upstream down and parks them. Timed until every
   one is parked.
4. Idle ``--idle`` seconds with the backlog parked: the gateway's CPU seconds and how many event
   rows were written meanwhile (should be ~0: no claim, no write while nothing is attempted).
5. Accepted msgs/s again with the backlog in the store: the ratio to step 2 (the goal: >= 0.9x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import RELAY, cpu_seconds, free_port, process_tree, relay_env, smtp_source, start_sink, wait_port  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from relay.store import Store  # noqa: E402
from relay.store import models as m  # noqa: E402
from relay.store.queue import NewMessage  # noqa: E402

BODY = (b"From: down@bench.test\r\nTo: r@dest.test\r\nSubject: backlog\r\nMessage-ID: <%d@bench.test>\r\n\r\n"
        + b"x" * 900 + b"\r\n")


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*RELAY, *args], env=env, check=True, capture_output=True, text=True).stdout


def provision(env: dict[str, str], sink_port: int) -> None:
    cli(env, "account", "create", "bench")
    cli(env, "domain", "add", "bench.test", "--account", "bench")
    cli(env, "domain", "verify", "bench.test", "--trust")
    cli(env, "upstream", "add", "sink", "--ip-pool", "default", "--host", "127.0.0.1", "--port", str(sink_port),
        "--encryption", "none", "--max-connections", "20")
    cli(env, "upstream", "add", "down", "--ip-pool", "down", "--host", "127.0.0.1", "--port", str(free_port()),
        "--encryption", "none")
    for alias, pool in (("app@bench.test", "default"), ("down@bench.test", "down")):
        cli(env, "alias", "add", alias, "--account", "bench", "--ip-pool", pool)
        cli(env, "alias", "verify", alias)


def serve(env: dict[str, str], ports: dict[str, int]) -> subprocess.Popen:
    proc = subprocess.Popen([*RELAY, "serve"], env=env)
    wait_port(ports["relay"])
    time.sleep(0.5)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def accept_rate(ports: dict[str, int], messages: int, sessions: int) -> float:
    return messages / smtp_source(ports["relay"], messages, sessions, 2048, "app@bench.test", "rcpt@dest.test")


def backlog(store: Store, n: int) -> None:
    with store.sessions() as s:
        account_id = s.scalar(sa.select(m.Account.id).where(m.Account.name == "bench"))
        alias_id = s.scalar(sa.select(m.Alias.id).where(m.Alias.email == "down@bench.test"))
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, n, 2000):
        store.queue.enqueue([NewMessage(
            id=f"msg_depth{i:010d}", ip_pool="down", mail_from="down@bench.test", body=BODY % i,
            recipients=[f"r{i}@dest.test"], created_at=now, expires_at=now + dt.timedelta(days=5),
            account_id=account_id, alias_id=alias_id, source="smtp") for i in range(start, min(n, start + 2000))])


def parked(store: Store, horizon: dt.timedelta) -> int:
    """Down-pool recipients deferred and not due within ``horizon``."""
    soon = dt.datetime.now(dt.timezone.utc) + horizon
    with store.sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(m.Recipient).join(m.Message)
                        .where(m.Message.ip_pool == "down", m.Recipient.state == "deferred",
                               m.Recipient.next_attempt_at > soon)) or 0


def events(store: Store) -> int:
    with store.sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(m.Event)) or 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deferred", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in the data dir)")
    args = ap.parse_args()
    if not shutil.which("smtp-sink") or not shutil.which("smtp-source"):
        raise SystemExit("needs smtp-sink and smtp-source (Debian package postfix)")

    tmp = Path(tempfile.mkdtemp(prefix="relay-depth-"))
    sink_port = free_port()
    sink = start_sink(sink_port)
    ports = {k: free_port() for k in ("submission", "smtps", "relay", "api")}
    env = relay_env(tmp / "data", ports, 1)
    if args.database_url:
        env["RELAY_DATABASE_URL"] = args.database_url
    url = args.database_url or f"sqlite:///{tmp / 'data' / 'relay.db'}"
    out: dict[str, float | int | str] = {"store": "postgresql" if args.database_url else "sqlite",
                                         "deferred": args.deferred}
    try:
        provision(env, sink_port)
        proc = serve(env, ports)
        out["accept_empty_per_s"] = round(accept_rate(ports, args.messages, args.sessions), 1)
        stop(proc)

        store = Store(url)
        t0 = time.time()
        backlog(store, args.deferred)
        out["backlog_written_s"] = round(time.time() - t0, 1)
        proc = serve(env, ports)
        t0 = time.time()
        while parked(store, dt.timedelta(minutes=5)) < args.deferred:
            if time.time() - t0 > 1800:
                raise SystemExit(f"not parked after 1800 s: {parked(store, dt.timedelta(minutes=5))}")
            time.sleep(2)
        out["parked_after_s"] = round(time.time() - t0, 1)
        time.sleep(5)  # the last outcomes' commits
        pids = process_tree(proc.pid)
        cpu0, ev0, t_idle = cpu_seconds(pids), events(store), dt.datetime.now(dt.timezone.utc)
        time.sleep(args.idle)
        with store.sessions() as s:  # what was written while nothing should have been
            out["idle_events"] = [f"{e.type} {e.recipient} {e.reply}"[:160] for e in s.scalars(
                sa.select(m.Event).where(m.Event.at >= t_idle).order_by(m.Event.id).limit(5))]
        out["idle_cpu_s_per_min"] = round((cpu_seconds(pids) - cpu0) * 60 / args.idle, 2)
        out["idle_event_rows"] = events(store) - ev0
        out["accept_with_backlog_per_s"] = round(accept_rate(ports, args.messages, args.sessions), 1)
        out["ratio"] = round(float(out["accept_with_backlog_per_s"]) / float(out["accept_empty_per_s"]), 2)
        stop(proc)
        store.close()
    finally:
        sink.terminate()
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
