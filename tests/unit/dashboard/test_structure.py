"""The dashboard's shape: one router per page group, all included; templates autoescaped; nothing
loaded from elsewhere and nothing the Content-Security-Policy would block (no inline script or style)."""

from __future__ import annotations

import importlib
import re
from importlib import resources

import pytest
from fastapi import APIRouter

from relay.dashboard import charts
from relay.dashboard.app import ROUTERS
from relay.dashboard.web import SECURITY_HEADERS, templates

PAGES = ("overview", "messages", "aliases", "domains", "pools", "suppressions", "keys", "webhooks", "usage", "users")
FILES = [f for d in ("templates", "static") for f in resources.files("relay.dashboard").joinpath(d).iterdir()]


@pytest.mark.parametrize("name", PAGES)
def test_each_page_group_has_a_router_the_app_includes(name):
    module = importlib.import_module(f"relay.dashboard.pages.{name}")
    assert isinstance(module.router, APIRouter) and module.router in ROUTERS


def test_templates_escape_what_they_show():
    assert templates.autoescape is True
    assert templates.from_string("{{ x }}").render(x="<script>") == "&lt;script&gt;"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_nothing_is_loaded_from_elsewhere_or_inline(path):
    text = path.read_text()
    assert not re.search(r"(src|href|action)=\"(https?:)?//", text), "an outside resource"
    assert "@import" not in text and "url(http" not in text and "fonts.g" not in text
    if path.name.endswith(".html"):
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), "inline script (the CSP blocks it)"
        assert " style=" not in text and "<style" not in text, "inline style (the CSP blocks it)"
        assert not re.search(r" on[a-z]+=", text), "an inline event handler"


def test_the_policy_allows_only_the_gateways_own_resources():
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp


def test_a_grouped_chart_scales_to_its_largest_value():
    chart = charts.grouped("t", ["a", "b"], ("x", "y"), [{"x": 4, "y": 2}, {"x": 0}], tick_every=2)
    assert chart.top == 4 and len(chart.bars) == 4 and [t.label for t in chart.ticks] == ["a"]
    tallest = max(chart.bars, key=lambda b: b.h)
    assert tallest.series == "x" and tallest.y + tallest.h == charts.BASE and tallest.y == 8
    assert [b.h for b in chart.bars if b.title.startswith("b")] == [0, 0]
    assert charts.grouped("t", ["a"], ("x",), [{"x": 0}]).top == 1  # nothing sent: no division by zero
