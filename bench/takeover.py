#!/usr/bin/env python3
"""Take-over benchmark: how long a node's mail waits when the node dies, and that none is lost.

    python bench/takeover.py [--messages 500] [--delay 0.3] [--lease 30 --lease 5] [--scenario kill --scenario term]
                             [--admin-url postgresql://postgres@127.0.0.1:5432/postgres] [--json FILE]

Needs a PostgreSQL server (the admin URL's user creates and drops the databases) and the project's
venv (``pip install -e '.[test]'``: the upstream is the crash tests' aiosmtpd sink).

Per run (one per --lease x --scenario), on a fresh database ``relay_takeover_<random>``, dropped after:

1. An upstream on loopback that commits a message only when it sends its reply to the final dot,
   ``--delay`` seconds after the dot (``tests.support.crash.DiscardingSink``: a connection lost in
   that window discards the message, as aiosmtpd does). It notes when it answered and which node
   (the EHLO name) sent it.
2. Two ``relay serve`` processes of this tree, A and B: separate data dirs (so distinct node ids),
   one master key (env RELAY_MASTER_KEY), one database; ``[delivery] lease_seconds`` = --lease,
   every other delivery setting at its default (poll_interval 5 s) unless given; each node opens at
   most --max-connections (5) to the upstream.
3. --messages messages submitted through A's trusted listener (10 sessions). A delivers them slowly
   (the upstream's delay), so when the submission ends A holds most of them, leased, in flight or in
   its active queue.
4. A is stopped: SIGKILL (``kill``) or SIGTERM (``term``: a graceful stop must hand its mail back).
   Measured from that instant: when B delivers the first and the last message A had not delivered
   (the take-over), when A exited (term), and that every accepted message reached the upstream at
   least once (none lost). Second copies, the store's resend events (each a possible duplicate) and
   B's relay_possible_duplicates_total are reported too.
5. The duplicate window under that load: for each message delivered once, the time from the
   upstream's reply (its commit) to the ``delivered`` event the gateway wrote (the event's time is
   the start of the outcome's group commit: the commit itself ends a few ms later).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import RELAY, free_port, relay_env  # noqa: E402

import aiosmtplib  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from aiosmtpd.smtp import SMTP as AioSMTP, Envelope, Session  # noqa: E402

from relay.store import models as m  # noqa: E402
from relay.store.queue import RESENT_REPLY  # noqa: E402
from tests.support.crash import DiscardingSink  # noqa: E402

SENDER = "app@bench.test"
logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # aiosmtpd: every connection a killed node drops
MID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.I | re.M)


class TimedSink(DiscardingSink):
    """The crash tests' commit-on-reply upstream, noting each committed copy: (Message-ID, when the
    reply was sent, the EHLO name of the node that sent it). ``answering``: dots waiting for their
    reply right now (in flight)."""

    def __init__(self, port: int, delay: float) -> None:
        super().__init__(port)
        self.delay = delay
        self.copies: list[tuple[str, float, str]] = []
        self.dots: dict[str, int] = {}  # final dots received per Message-ID, answered or not
        self.answering = 0

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        found = MID.search(envelope.original_content or b"")
        mid = found.group(1).decode() if found else ""
        self.dots[mid] = self.dots.get(mid, 0) + 1
        self.answering += 1
        try:
            reply = await super().handle_DATA(server, session, envelope)
        finally:
            self.answering -= 1
        if reply.startswith("250"):  # (no await since DiscardingSink appended it: this copy is the last)
            self.copies.append((mid, self.received[-1].at, session.host_name or ""))
        return reply

    def by_mid(self) -> dict[str, list[tuple[float, str]]]:
        out: dict[str, list[tuple[float, str]]] = {}
        for mid, at, helo in self.copies:
            out.setdefault(mid, []).append((at, helo))
        return out


class Node:
    """One ``relay serve`` of this tree: its data dir (node id), ports and process."""

    def __init__(self, name: str, tmp: Path, master_key: str, database_url: str | None,
                 overrides: dict[str, str]) -> None:
        self.name = name
        self.hostname = f"{name}.bench"
        self.ports = {k: free_port() for k in ("submission", "smtps", "relay", "api")}
        self.dir = tmp / name
        self.env = relay_env(self.dir / "data", self.ports, 1)
        self.env.update({"RELAY_MASTER_KEY": master_key, "RELAY_HOSTNAME": self.hostname})
        self.env.pop("RELAY_DELIVERY_POLL_INTERVAL")  # the shipped default unless given
        if database_url:
            self.env["RELAY_DATABASE_URL"] = database_url
        self.env.update(overrides)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.dir / f"serve{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen([*RELAY, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.ports["relay"], self.proc, self.dir)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.proc = None
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s: never leave a process behind."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def metric(self, name: str) -> float | None:
        """A counter from this node's /metrics (free from loopback); None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['api']}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def log_lines(self, needle: str) -> int:
        return sum(p.read_text(errors="replace").count(needle) for p in self.dir.glob("serve*.log"))


def provision(env: dict[str, str], sink_port: int, max_connections: int) -> None:
    """Account, domain, alias and the one upstream (the sink) in the store, through the CLI."""
    def cli(*args: str) -> None:
        subprocess.run([*RELAY, *args], env=env, check=True, capture_output=True, text=True)

    cli("account", "create", "bench")
    cli("domain", "add", "bench.test", "--account", "bench")
    cli("domain", "verify", "bench.test", "--trust")
    cli("pool", "add", "sink", "--ip-pool", "default", "--host", "127.0.0.1", "--port", str(sink_port),
        "--encryption", "none", "--max-connections", str(max_connections))
    cli("alias", "add", SENDER, "--account", "bench")
    cli("alias", "verify", SENDER)


def wait_listening(port: int, proc: subprocess.Popen, where: Path, timeout: float = 60) -> None:
    import socket

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"relay serve exited with {proc.returncode}; see {where}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"relay serve did not listen on {port}; see {where}")


# -- PostgreSQL: a fresh database per run -------------------------------------------------------------
def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    engine = sa.create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    url = sa.engine.make_url(_psycopg(admin_url)).set(database=name)
    return name, url.render_as_string(hide_password=False).replace("+psycopg", "")


def drop_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


def store_url(url: str) -> str:
    return _psycopg(url)


# -- load ---------------------------------------------------------------------------------------------
async def submit(port: int, tag: str, n: int, sessions: int = 10) -> list[str]:
    """``n`` messages on ``sessions`` parallel connections to a trusted listener; the Message-IDs that
    got their 250 (a refused or cut transaction is left out: its client would retry)."""
    ok: list[str] = []
    todo = iter(range(n))

    async def one_session() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=30)
        await smtp.connect()
        try:
            for i in todo:
                mid = f"<{tag}-{i}-{secrets.token_hex(6)}@bench.test>"
                raw = (f"From: App <{SENDER}>\r\nTo: r{i}@dest.test\r\nSubject: {tag} {i}\r\nMessage-ID: {mid}\r\n"
                       f"\r\n" + "body line\r\n" * 20).encode()
                try:
                    errors, reply = await smtp.sendmail(SENDER, [f"r{i}@dest.test"], raw)
                except (aiosmtplib.SMTPException, OSError):
                    return
                if not errors:
                    ok.append(mid)
        finally:
            with contextlib.suppress(Exception):
                await smtp.quit()

    await asyncio.gather(*(one_session() for _ in range(sessions)), return_exceptions=True)
    return ok


def dist(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)
    return {"n": len(v), "min": round(v[0], 4), "median": round(statistics.median(v), 4),
            "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))], 4), "max": round(v[-1], 4)}


def window(url: str, sink: TimedSink, mids: set[str]) -> list[float]:
    """Seconds from the upstream's reply (its commit) to the gateway's ``delivered`` event, for the
    messages of ``mids`` that arrived once and were recorded delivered once."""
    copies = sink.by_mid()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(m.Message.header_message_id, m.Event.at)
                             .join(m.Event, m.Event.message_id == m.Message.id)
                             .where(m.Event.type == "delivered")).all()
    finally:
        engine.dispose()
    events: dict[str, list[dt.datetime]] = {}
    for mid, at in rows:
        events.setdefault((mid or "").strip(), []).append(at)
    out = []
    for mid in mids:
        got, ev = copies.get(mid, []), events.get(mid, [])
        if len(got) == 1 and len(ev) == 1:
            at = ev[0] if ev[0].tzinfo else ev[0].replace(tzinfo=dt.timezone.utc)
            out.append(at.timestamp() - got[0][0])
    return out


def resent_events(url: str) -> list[dt.datetime]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return [a if a.tzinfo else a.replace(tzinfo=dt.timezone.utc) for a in c.scalars(
                sa.select(m.Event.at).where(m.Event.reply == RESENT_REPLY))]
    finally:
        engine.dispose()


def resent_mids(url: str) -> set[str]:
    """Message-IDs of the messages the store sent again after a dot without its reply (counted)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return {(mid or "").strip() for mid in c.scalars(
                sa.select(m.Message.header_message_id).join(m.Event, m.Event.message_id == m.Message.id)
                .where(m.Event.reply == RESENT_REPLY))}
    finally:
        engine.dispose()


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks stop the nodes and drop the databases."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def measure(sink: TimedSink, accepted: list[str], stranded: set[str], t_stop: float, b: Node, url: str) -> dict:
    """After a stop at ``t_stop``: who delivered A's stranded messages and when; loss, second copies,
    resends; the reply -> outcome window."""
    out: dict = {}
    seen = sink.by_mid()
    first_after = {mid: min(at for at, _ in seen[mid] if at > t_stop) for mid in stranded
                   if any(at > t_stop for at, _ in seen.get(mid, []))}
    by_b = [min(at for at, helo in seen[mid] if helo == b.hostname and at > t_stop) - t_stop for mid in first_after
            if any(helo == b.hostname and at > t_stop for at, helo in seen[mid])]
    by_a = [mid for mid in first_after if any(helo != b.hostname and at > t_stop for at, helo in seen[mid])]
    # B must not touch A's leased mail while A lives (its heartbeat keeps the leases)
    out["b_delivered_before_stop"] = sum(1 for mid in accepted for at, helo in seen.get(mid, [])
                                         if helo == b.hostname and at <= t_stop)
    out["a_delivered_after_stop"] = len(by_a)  # term: A finishing its work before it hands the rest back
    out["b_took_over"] = len(by_b)
    out["b_first_s"] = round(min(by_b), 2) if by_b else None
    out["b_last_s"] = round(max(by_b), 2) if by_b else None
    out["last_stranded_s"] = round(max(first_after.values()) - t_stop, 2) if first_after else None
    out["lost"] = sum(1 for mid in accepted if mid not in seen)
    out["duplicated"] = sum(1 for mid in accepted if len(seen.get(mid, [])) > 1)
    resent = resent_events(url)
    out["resend_events"] = len(resent)
    out["b_possible_duplicates_total"] = b.metric("relay_possible_duplicates_total")
    out["b_resend_log_lines"] = b.log_lines("delivering again")
    w = window(url, sink, set(accepted))
    out["window_s"] = dist(w)
    if out["lost"]:
        out["lost_ids"] = [mid for mid in accepted if mid not in seen][:10]
    return out


# -- one take-over run ----------------------------------------------------------------------------------
async def takeover(args: argparse.Namespace, lease: float, scenario: str) -> dict:
    name, url = create_database(args.admin_url, "relay_takeover")
    tmp = Path(tempfile.mkdtemp(prefix="relay-takeover-"))
    sink = TimedSink(free_port(), args.delay)
    await sink.start()
    overrides = {"RELAY_DELIVERY_LEASE_SECONDS": str(lease)}
    if args.poll_interval is not None:
        overrides["RELAY_DELIVERY_POLL_INTERVAL"] = str(args.poll_interval)
    key = new_master_key()
    a = Node("node-a", tmp, key, url, overrides)
    b = Node("node-b", tmp, key, url, overrides)
    out: dict = {"scenario": scenario, "lease_seconds": lease, "messages": args.messages, "delay": args.delay}
    try:
        a.dir.mkdir(parents=True)
        await asyncio.to_thread(provision, a.env, sink.port, args.max_connections)
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        t0 = time.time()
        accepted = await submit(a.ports["relay"], "takeover", args.messages)
        out["accepted"] = len(accepted)
        out["submit_s"] = round(time.time() - t0, 2)
        await asyncio.sleep(args.settle)
        t_stop = time.time()
        a.signal(signal.SIGKILL if scenario == "kill" else signal.SIGTERM)
        in_flight = sink.answering
        before = {mid for mid, at, _ in sink.copies if at <= t_stop}
        stranded = set(accepted) - before
        out["delivered_by_a_before_stop"] = len(before & set(accepted))
        out["stranded_at_stop"] = len(stranded)
        out["dots_awaiting_reply_at_stop"] = in_flight
        def wait_exit() -> tuple[int | None, float]:
            return a.wait(120), time.time()

        exited = asyncio.create_task(asyncio.to_thread(wait_exit))
        deadline = t_stop + 3 * lease + args.drain_timeout
        while time.time() < deadline:
            seen = sink.by_mid()
            if all(mid in seen for mid in accepted) and exited.done():
                break
            await asyncio.sleep(0.2)
        code, t_exit = await exited
        out["a_exit_code"] = code
        out["a_exited_s"] = round(t_exit - t_stop, 2)
        out.update(measure(sink, accepted, stranded, t_stop, b, store_url(url)))
    finally:
        for node in (a, b):
            node.stop()
        await sink.stop()
        drop_database(args.admin_url, name)
        if os.environ.get("KEEP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def table(rows: list[dict], cols: list[str]) -> str:
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(str(r.get(c)) for c in cols))
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict]:
    runs = []
    for scenario in args.scenario or ["kill", "term"]:
        for lease in args.lease or [30.0, 5.0]:
            if scenario == "term" and args.lease is None and lease != 30.0:
                continue  # a graceful stop does not wait for the lease: once, with the default
            r = await takeover(args, lease, scenario)
            print(json.dumps(r), file=sys.stderr, flush=True)
            runs.append(r)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--delay", type=float, default=0.3, help="the upstream's reply this long after the dot")
    ap.add_argument("--lease", type=float, action="append", help="[delivery] lease_seconds (repeat; default 30 and 5)")
    ap.add_argument("--scenario", choices=["kill", "term"], action="append", help="default: both")
    ap.add_argument("--max-connections", type=int, default=5, help="to the upstream, per node")
    ap.add_argument("--poll-interval", type=float, default=None, help="[delivery] poll_interval (default: Relay's)")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds between the last 250 and the stop")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sigterm_as_interrupt()
    runs = asyncio.run(main_async(args))
    print(table(runs, ["scenario", "lease_seconds", "accepted", "stranded_at_stop", "dots_awaiting_reply_at_stop",
                       "b_first_s", "b_last_s", "a_delivered_after_stop", "a_exited_s", "last_stranded_s", "lost",
                       "duplicated", "resend_events"]))
    for r in runs:
        print(f"{r['scenario']} lease {r['lease_seconds']:g}: reply->outcome window {r['window_s']}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
