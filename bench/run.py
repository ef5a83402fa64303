#!/usr/bin/env python3
"""Throughput benchmark: Relay vs Postfix, same load, same sink.

    python bench/run.py [--messages 5000] [--sessions 20] [--size 4096] [--workers 2] [--no-postfix] [--rounds 1]

Needs Postfix's smtp-sink and smtp-source (Debian package ``postfix``; run as root for the
Postfix comparison, which reconfigures the local Postfix instance as a relay to the sink).

Phases:
1. smtp-sink listens on a free loopback port (the upstream for both).
2. Relay (``relay serve`` in a subprocess, SQLite, DKIM on, durable commits) gets the load from
   smtp-source on its trusted ``relay`` listener; accepted msgs/s is measured at the client, delivered
   msgs/s from the store (every recipient delivered), CPU seconds from /proc.
3. Latency: our aiosmtplib loader with STARTTLS + AUTH on 587-style submission, reused connections,
   p50/p99 time from the end of DATA to the 250.
4. Postfix, configured as a relay to the same sink, gets the same smtp-source load; delivered when
   its queue is empty. The ratio Relay/Postfix of delivered msgs/s is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError):
            pass
    return total


def process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return out
    for c in children:
        out += process_tree(int(c))
    return out


def start_sink(port: int) -> subprocess.Popen:
    cmd = ["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1024"] if os.geteuid() == 0 else \
          ["smtp-sink", f"127.0.0.1:{port}", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def smtp_source(port: int, messages: int, sessions: int, size: int, sender: str, rcpt: str) -> float:
    started = time.time()
    subprocess.run(["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(messages), "-f", sender,
                    "-t", rcpt, "-M", "bench.test", f"127.0.0.1:{port}"], check=True)
    return time.time() - started


# -- Relay -----------------------------------------------------------------------------------------
def relay_env(data: Path, ports: dict[str, int], workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RELAY_DATA_DIR": str(data), "RELAY_HOSTNAME": "relay.bench",
        "RELAY_SMTP_SUBMISSION": f"127.0.0.1:{ports['submission']}",
        "RELAY_SMTP_SMTPS": f"127.0.0.1:{ports['smtps']}",
        "RELAY_SMTP_RELAY": f"127.0.0.1:{ports['relay']}",
        "RELAY_SMTP_TRUSTED": '[{network = "127.0.0.0/8", account = "bench"}]',
        "RELAY_SMTP_WORKERS": str(workers),
        "RELAY_API_LISTEN": f"127.0.0.1:{ports['api']}",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_DELIVERY_POLL_INTERVAL": "1",
    })
    return env


def provision(env: dict[str, str], sink_port: int) -> str:
    def cli(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["relay", *args], env=env, check=True, capture_output=True, text=True,
                              input=stdin).stdout

    cli("account", "create", "bench")
    cli("domain", "add", "bench.test", "--account", "bench")
    cli("domain", "verify", "bench.test", "--trust")
    cli("pool", "add", "sink", "--ip-pool", "default", "--host", "127.0.0.1", "--port", str(sink_port),
        "--encryption", "none", "--max-connections", "20")
    cli("alias", "add", "app@bench.test", "--account", "bench")
    cli("alias", "verify", "app@bench.test")
    return json.loads(cli("key", "create", "--account", "bench", "--scopes", "send", "--json"))["key"]


def delivered_count(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM recipients r JOIN messages m ON m.id = r.message_id "
                           "WHERE r.state = 'delivered' AND m.source = 'smtp'").fetchone()[0]
    finally:
        con.close()


async def latency_load(port: int, key: str, messages: int, sessions: int, size: int) -> list[float]:
    import aiosmtplib

    body = (b"From: App <app@bench.test>\r\nTo: r@dest.test\r\nSubject: bench\r\n\r\n"
            + (b"x" * 76 + b"\r\n") * max(1, size // 78))
    per = messages // sessions
    lat: list[float] = []

    async def one() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, validate_certs=False)
        await smtp.connect()
        await smtp.login("apikey", key)
        for _ in range(per):
            await smtp.mail("app@bench.test")
            await smtp.rcpt("r@dest.test")
            t = time.perf_counter()
            await smtp.data(body)
            lat.append(time.perf_counter() - t)
        await smtp.quit()

    await asyncio.gather(*(one() for _ in range(sessions)))
    return lat


def bench_relay(args: argparse.Namespace, sink_port: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    ports = {k: free_port() for k in ("submission", "smtps", "relay", "api")}
    env = relay_env(tmp / "data", ports, args.workers)
    key = provision(env, sink_port)
    proc = subprocess.Popen(["relay", "serve"], env=env)
    try:
        wait_port(ports["relay"])
        wait_port(ports["submission"])
        time.sleep(0.5)
        pids = process_tree(proc.pid)
        cpu0 = cpu_seconds(pids)
        t0 = time.time()
        elapsed_accept = smtp_source(ports["relay"], args.messages, args.sessions, args.size,
                                     "app@bench.test", "rcpt@dest.test")
        db = tmp / "data" / "relay.db"
        while delivered_count(db) < args.messages:
            if time.time() - t0 > 600:
                raise SystemExit("relay: not all messages delivered within 600 s")
            time.sleep(0.05)
        elapsed_deliver = time.time() - t0
        cpu = cpu_seconds(process_tree(proc.pid)) - cpu0
        lost = args.messages - delivered_count(db)
        lat = asyncio.run(latency_load(ports["submission"], key, args.latency_messages, args.sessions, args.size))
        lat.sort()
        return {"accepted_per_s": args.messages / elapsed_accept, "delivered_per_s": args.messages / elapsed_deliver,
                "cpu_s": cpu, "p50_ms": statistics.median(lat) * 1000,
                "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000, "lost": lost}
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


# -- Postfix ---------------------------------------------------------------------------------------
def postfix_queue_size() -> int:
    total = 0
    for sub in ("incoming", "active", "deferred", "maildrop"):
        d = Path("/var/spool/postfix") / sub
        if d.exists():
            total += sum(len(files) for _, _, files in os.walk(d))
    return total


def bench_postfix(args: argparse.Namespace, sink_port: int) -> dict | None:
    if os.geteuid() != 0 or not shutil.which("postfix"):
        print("postfix: skipped (needs root and the postfix package)")
        return None
    port = free_port()
    subprocess.run(["postfix", "stop"], capture_output=True)
    settings = [f"relayhost=[127.0.0.1]:{sink_port}", "inet_interfaces=loopback-only", "mydestination=",
                "mynetworks=127.0.0.0/8", "smtpd_relay_restrictions=permit_mynetworks,reject",
                "default_destination_concurrency_limit=20", "smtp_connection_cache_on_demand=yes",
                "compatibility_level=3.6", "myhostname=postfix.bench"]
    subprocess.run(["postconf", "-e", *settings], check=True)
    master = Path("/etc/postfix/master.cf")
    text = master.read_text()
    line = f"127.0.0.1:{port} inet n - y - - smtpd\n"
    master.write_text(text + line)
    try:
        r = subprocess.run(["postfix", "start"], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"postfix start failed: {r.stdout}{r.stderr}")
        wait_port(port)
        t0 = time.time()
        cpu0 = 0.0
        elapsed_accept = smtp_source(port, args.messages, args.sessions, args.size, "app@bench.test", "rcpt@dest.test")
        while postfix_queue_size() > 0:
            if time.time() - t0 > 600:
                raise SystemExit("postfix: queue not empty within 600 s")
            time.sleep(0.05)
        elapsed = time.time() - t0
        return {"accepted_per_s": args.messages / elapsed_accept, "delivered_per_s": args.messages / elapsed,
                "cpu_s": cpu0}
    finally:
        subprocess.run(["postfix", "stop"], capture_output=True)
        master.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--latency-messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2, help="Relay worker processes (SO_REUSEPORT)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate Relay and Postfix this many times and print the median ratio "
                         "(on a noisy machine one round's ratio can be off by a third)")
    args = ap.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install postfix")
    sink_port = free_port()
    sink = start_sink(sink_port)
    ratios: list[float] = []
    try:
        for n in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {n} of {args.rounds}")
            relay = bench_relay(args, sink_port)
            print(f"relay:   accepted {relay['accepted_per_s']:.0f} msg/s, delivered {relay['delivered_per_s']:.0f} msg/s, "
                  f"p50 {relay['p50_ms']:.1f} ms, p99 {relay['p99_ms']:.1f} ms to 250 (STARTTLS+AUTH loader), "
                  f"CPU {relay['cpu_s']:.1f} s ({relay['cpu_s'] / args.messages * 1000:.2f} ms/msg), "
                  f"lost {relay['lost']}")
            if args.no_postfix:
                continue
            pf = bench_postfix(args, sink_port)
            if pf:
                ratios.append(relay["delivered_per_s"] / pf["delivered_per_s"])
                print(f"postfix: accepted {pf['accepted_per_s']:.0f} msg/s, delivered {pf['delivered_per_s']:.0f} msg/s")
                print(f"ratio (delivered, relay/postfix): {ratios[-1]:.2f}x")
        if len(ratios) > 1:
            print(f"median ratio over {len(ratios)} rounds: {statistics.median(ratios):.2f}x "
                  f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
