#!/usr/bin/env python3
"""The header fast path on hostile input: time per 200 KB header built to make parsers backtrack,
and the time ratio between 200 KB and 400 KB (about 2 when the parse is linear).

    python bench/headers.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.submission.message import _summarize_fast  # noqa: E402


def hostile(n: int) -> list[bytes]:
    blanks = b" " * n
    return [b"Subject:" + blanks + b"\x01\r\n\r\n", b"To:" + blanks + b"x\r\n\r\n", b"To: " + b"a" * n + b"\r\n\r\n",
            b"To: " + b"a." * (n // 2) + b"\r\n\r\n", b"To: \"" + blanks + b"\r\n\r\n",
            b"To:" + b"\r\n " * (n // 2) + b"x\r\n\r\n"]


def timed(raw: bytes) -> float:
    started = time.perf_counter()
    _summarize_fast(raw)
    return time.perf_counter() - started


def main() -> None:
    for small, large in zip(hostile(200_000), hostile(400_000)):
        t1, t2 = timed(small), timed(large)
        print(f"{small[:12]!r:<20} 200 KB: {t1 * 1000:7.2f} ms   400 KB: {t2 * 1000:7.2f} ms   ratio {t2 / t1:4.1f}")


if __name__ == "__main__":
    main()
