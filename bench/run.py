#!/usr/bin/env python3
"""Throughput benchmark: Relay vs Postfix, same load, same sink.

    python bench/run.py [--messages 5000] [--sessions 20] [--size 4096] [--workers 2] [--no-postfix] [--rounds 1]

Needs Postfix's smtp-sink and smtp-source (Debian package ``postfix``; run as root for the
Postfix comparison, which starts a private Postfix instance in a temporary directory - its own
main.cf, master.cf, queue and data directories - and never writes to /etc/postfix or
/var/spool/postfix nor stops a running system Postfix; without root or the package that phase is
skipped). Run it with a Python that has Relay's dependencies (e.g. the project's venv): Relay is
started as ``python -m relay.cli`` with this tree first on PYTHONPATH, so it is the code next to
this script, not whatever ``relay`` is installed.

Phases:
1. smtp-sink listens on a free loopback port (the upstream for both).
2. Relay (``relay serve`` in a subprocess, SQLite, DKIM on, durable commits) gets the load from
   smtp-source on its trusted ``relay`` listener; accepted msgs/s is measured at the client, delivered
   msgs/s from the store (every recipient delivered), CPU seconds from /proc.
3. Latency: our aiosmtplib loader with STARTTLS + AUTH on 587-style submission, reused connections,
   p50/p99 time from the end of DATA to the 250.
4. Postfix, a private instance on a free loopback port relaying everything to the same sink
   (relayhost, no DNS, no local delivery, log in its temporary directory), gets the same
   smtp-source load; delivered when its queue directory is empty. The instance is stopped and its
   directory removed afterwards, also on error or SIGTERM. The ratio Relay/Postfix of delivered
   msgs/s is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
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
RELAY = [sys.executable, "-m", "relay.cli"]


def relay_env(data: Path, ports: dict[str, int], workers: int) -> dict[str, str]:
    env = dict(os.environ)
    # The Relay of this tree, whatever "relay" is on PATH or installed (editable) in the venv.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
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
        return subprocess.run([*RELAY, *args], env=env, check=True, capture_output=True, text=True,
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
    proc = subprocess.Popen([*RELAY, "serve"], env=env)
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
# A private instance: its own config_directory (main.cf and master.cf written here), queue_directory
# and data_directory under one temporary directory. The system's /etc/postfix and /var/spool/postfix
# are only read (by "postfix check": the meta files such as postfix-files), never written, and a
# running system Postfix is left alone. The queue directory is created here (root-owned, as Postfix
# wants it); its subdirectories and the data directory, owned by mail_owner, by "postfix -c DIR
# start" (post-install create-missing).
POSTFIX_MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_compatibility_level() -> str:
    version = subprocess.run(["postconf", "-dh", "mail_version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    major, minor = (int(x) for x in version.split(".")[:2])
    return "3.6" if (major, minor) >= (3, 6) else "2"


def postfix_main_cf(tmp: Path, queue: Path, data: Path, maillog: Path, sink_port: int) -> str:
    settings = {
        "queue_directory": queue, "data_directory": data,
        "maillog_file_prefixes": tmp, "maillog_file": maillog,
        "compatibility_level": postfix_compatibility_level(),
        "myhostname": "postfix.bench", "mydestination": "", "mynetworks": "127.0.0.0/8",
        "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4",
        "relayhost": f"[127.0.0.1]:{sink_port}", "smtp_dns_support_level": "disabled",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "alias_maps": "", "alias_database": "", "biff": "no",
        "default_destination_concurrency_limit": "20", "smtp_connection_cache_on_demand": "yes",
    }
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


def postfix_queue_size(queue: Path) -> int:
    total = 0
    for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
        total += sum(len(files) for _, _, files in os.walk(queue / sub))
    return total


def postfix_instance_pids(queue: Path) -> list[int]:
    """The instance's processes: master and every daemon it spawns chdir to its queue_directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(queue):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def stop_postfix(conf: Path, queue: Path) -> None:
    # "postfix stop" waits up to 5 s for master, then kills its process group; whatever of the
    # instance is left after that (a daemon still finishing) gets SIGKILL.
    try:
        master = int((queue / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        master = 0
    subprocess.run(["postfix", "-c", str(conf), "stop"], check=False, capture_output=True)
    end = time.time() + 10
    # Until init has reaped master (a zombie has no cwd), so that none is left when we return.
    while (postfix_instance_pids(queue) or master and Path(f"/proc/{master}").exists()) and time.time() < end:
        time.sleep(0.1)
    for pid in postfix_instance_pids(queue):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bench_postfix(args: argparse.Namespace, sink_port: int) -> dict | None:
    if os.geteuid() != 0 or not shutil.which("postfix"):
        print("postfix: skipped (needs root and the postfix package)")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-postfix-")).resolve()
    tmp.chmod(0o755)  # the daemons run as mail_owner and must reach the queue directory
    conf, queue, data, maillog = tmp / "etc", tmp / "spool", tmp / "data", tmp / "maillog"
    port = free_port()
    try:
        conf.mkdir(mode=0o755)
        queue.mkdir(mode=0o755)  # root-owned; "postfix start" creates its subdirectories and data
        (conf / "main.cf").write_text(postfix_main_cf(tmp, queue, data, maillog, sink_port))
        (conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(listen=f"127.0.0.1:{port}"))
        r = subprocess.run(["postfix", "-c", str(conf), "start"], check=False, capture_output=True, text=True)
        if r.returncode:
            log = maillog.read_text(errors="replace")[-2000:] if maillog.exists() else ""
            raise SystemExit(f"postfix start failed: {r.stdout}{r.stderr}{log}")
        wait_port(port)
        t0 = time.time()
        elapsed_accept = smtp_source(port, args.messages, args.sessions, args.size, "app@bench.test", "rcpt@dest.test")
        while postfix_queue_size(queue) > 0:
            if time.time() - t0 > 600:
                raise SystemExit("postfix: queue not empty within 600 s")
            time.sleep(0.05)
        elapsed = time.time() - t0
        return {"accepted_per_s": args.messages / elapsed_accept, "delivered_per_s": args.messages / elapsed}
    finally:
        stop_postfix(conf, queue)
        shutil.rmtree(tmp, ignore_errors=True)


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
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop Relay, Postfix and the sink.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
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
