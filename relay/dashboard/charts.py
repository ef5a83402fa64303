"""Bar charts drawn on the server as SVG geometry (the template draws the rects): no script, no library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT, BASE = 720, 180, 162  # the viewBox; BASE is the axis (tick labels below it)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    series: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    label: str
    series: tuple[str, ...]
    top: int
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    base: int = BASE


def grouped(label: str, labels: Sequence[str], series: Sequence[str], values: Sequence[dict[str, int]],
            tick_every: int = 1) -> Chart:
    """One group of bars per label (each series side by side), scaled to the largest value."""
    top = max([v.get(s, 0) for v in values for s in series] + [1])
    group = WIDTH / max(len(labels), 1)
    w = group * 0.8 / max(len(series), 1)
    bars, ticks = [], []
    for i, (name, value) in enumerate(zip(labels, values)):
        x0 = i * group + group * 0.1
        for j, s in enumerate(series):
            n = value.get(s, 0)
            h = (BASE - 8) * n / top
            bars.append(Bar(round(x0 + j * w, 2), round(BASE - h, 2), round(w, 2), round(h, 2), s, f"{name}: {n} {s}"))
        if i % tick_every == 0:
            ticks.append(Tick(round(x0, 2), name))
    return Chart(label, tuple(series), top, bars, ticks)
