#!/usr/bin/env python3
"""Memory with many idle connections: open N connections to the submission port and hold them.

    python bench/idle.py [--connections 5000]

Prints the gateway's RSS before, with all connections open and greeted, and after they close.
Needs a file-descriptor limit above N for both this script and the gateway (it raises its own soft
limit to the hard limit).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=5000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 100:
        raise SystemExit(f"file descriptor limit {hard} is too low for {args.connections} connections")
    tmp = Path(tempfile.mkdtemp(prefix="relay-idle-"))
    ports = {k: run.free_port() for k in ("submission", "smtps", "relay", "api")}
    env = run.relay_env(tmp / "data", ports, 1)
    env.update({"RELAY_SMTP_MAX_CONNECTIONS": str(args.connections + 100),
                "RELAY_SMTP_MAX_CONNECTIONS_PER_IP": str(args.connections + 100),
                "RELAY_SMTP_COMMAND_TIMEOUT": "600"})
    gw = subprocess.Popen(["relay", "serve"], env=env)
    conns: list[socket.socket] = []
    try:
        run.wait_port(ports["submission"])
        time.sleep(1.0)
        before = rss_mb(gw.pid)
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", ports["submission"]), timeout=30)
            conns.append(s)
        greeted = sum(1 for s in conns if s.recv(128).startswith(b"220 "))
        time.sleep(1.0)
        during = rss_mb(gw.pid)
        for s in conns:
            s.close()
        conns.clear()
        time.sleep(2.0)
        after = rss_mb(gw.pid)
        print(f"{greeted} of {args.connections} idle connections greeted; RSS {before:.1f} MB before, "
              f"{during:.1f} MB with them open ({(during - before) * 1024 / max(greeted, 1):.1f} KB each), "
              f"{after:.1f} MB after they closed")
    finally:
        for s in conns:
            s.close()
        gw.terminate()
        gw.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
