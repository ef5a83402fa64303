#!/usr/bin/env python3
"""Soak: push many messages through Relay while the upstream answers 4xx at random.

    python bench/soak.py [--messages 100000] [--chunk 10000] [--fail 0.10] [--workers 1]

The upstream is an aiosmtpd sink in its own process that answers ``451`` to a random share of the
DATA commands (``--fail``) and counts the Message-IDs it takes. The load is Postfix's smtp-source
on Relay's trusted ``relay`` listener, in chunks; after each chunk the gateway's RSS and open file
descriptors are sampled. At the end every message must be delivered, exactly once, and RSS and fds
must be flat from the first chunk to the last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: ports, provisioning, smtp-source, process tree)

SINK = r"""
import asyncio, random, sys, collections, logging
from aiosmtpd.smtp import SMTP
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
fail = float(sys.argv[2]); rand = random.Random(5); seen = collections.Counter()
class H:
    async def handle_DATA(self, server, session, envelope):
        if rand.random() < fail:
            return "451 4.3.0 try again later"
        mid = b""
        for line in envelope.original_content.split(b"\r\n", 40):
            if line[:11].lower() == b"message-id:":
                mid = line[11:].strip(); break
        seen[mid] += 1
        return "250 2.0.0 OK"
class S(SMTP):
    def eof_received(self):
        return asyncio.StreamReaderProtocol.eof_received(self)
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: S(H(), hostname="sink", loop=loop), "127.0.0.1", int(sys.argv[1]))
    async def report():
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            dup = sum(1 for v in seen.values() if v > 1)
            print(f"{sum(seen.values())} {len(seen)} {dup}", flush=True)
    await report()
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--fail", type=float, default=0.10)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if not shutil.which("smtp-source"):
        raise SystemExit("smtp-source not found: apt-get install postfix")
    tmp = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    sink_port = run.free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port), str(args.fail)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    run.wait_port(sink_port)
    ports = {k: run.free_port() for k in ("submission", "smtps", "relay", "api")}
    env = run.relay_env(tmp / "data", ports, args.workers)
    env.update({"RELAY_DELIVERY_RETRY_BASE": "1", "RELAY_DELIVERY_RETRY_MAX": "5",
                "RELAY_DELIVERY_POLL_INTERVAL": "0.5", "RELAY_DELIVERY_BREAKER_THRESHOLD": "1000000"})
    run.provision(env, sink_port)
    gw = subprocess.Popen(["relay", "serve"], env=env)
    try:
        run.wait_port(ports["relay"])
        time.sleep(0.5)
        db = tmp / "data" / "relay.db"
        print(f"{'sent':>8} {'delivered':>9} {'RSS MB':>7} {'fds':>5} {'msg/s':>6}")
        samples = []
        sent = 0
        t0 = time.time()
        while sent < args.messages:
            n = min(args.chunk, args.messages - sent)
            started = time.time()
            run.smtp_source(ports["relay"], n, args.sessions, args.size, "app@bench.test", "rcpt@dest.test")
            sent += n
            pids = run.process_tree(gw.pid)
            rss = sum(rss_kb(p) for p in pids) / 1024
            nfd = sum(fds(p) for p in pids)
            samples.append((sent, rss, nfd))
            print(f"{sent:>8} {run.delivered_count(db):>9} {rss:>7.1f} {nfd:>5} {n / (time.time() - started):>6.0f}",
                  flush=True)
        while run.delivered_count(db) < args.messages:
            if time.time() - t0 > 3600:
                raise SystemExit("not all delivered within an hour")
            time.sleep(1)
        elapsed = time.time() - t0
        sink.stdin.write("report\n")
        sink.stdin.flush()
        total, unique, dups = map(int, sink.stdout.readline().split())
        print(f"delivered {args.messages} in {elapsed:.0f} s ({args.messages / elapsed:.0f} msg/s); sink took "
              f"{total} copies of {unique} messages, {dups} duplicated")
        first, last = samples[0], samples[-1]
        print(f"RSS {first[1]:.1f} -> {last[1]:.1f} MB, fds {first[2]} -> {last[2]}")
        # (the sink also took the alias verification email of the provisioning)
        ok = total == unique == args.messages + 1 and dups == 0 and last[1] < first[1] * 1.3 + 20 \
            and last[2] <= first[2] + 10
        print("soak: OK" if ok else "soak: FAILED")
        sys.exit(0 if ok else 1)
    finally:
        gw.terminate()
        gw.wait(30)
        sink.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
