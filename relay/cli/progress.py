"""Progress for long CLI work (queue retry/delete over many messages, suppression import/export).

A bar on stderr when stderr is a terminal and the output is not ``--json``; silent otherwise, so
scripts and pipes see only the result.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")

__all__ = ["progress", "shown"]


def shown(as_json: bool, stream=None) -> bool:
    """Whether a progress bar may be drawn: a terminal, and no --json."""
    stream = sys.stderr if stream is None else stream
    return not as_json and bool(getattr(stream, "isatty", lambda: False)())


def progress(items: Iterable[T], *, label: str, length: int | None = None, as_json: bool = False) -> Iterator[T]:
    """Iterate over *items*, drawing a bar on a terminal (``length`` when *items* has no len())."""
    if not shown(as_json):
        yield from items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield from bar
