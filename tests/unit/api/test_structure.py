"""The HTTP API's shape as code: one module-level router per resource, dependencies injected (no
route takes a gateway), and the send rules that live in relay.services.send."""

from __future__ import annotations

import importlib
import inspect

import pytest
from fastapi import APIRouter

from relay.api.app import ROUTERS
from relay.services.send import (
    MAX_BCC,
    MAX_CC,
    MAX_TO,
    unique_recipients,
)
from relay.submission.pipeline import API_MAX_RECIPIENTS, is_suppression
from relay.vocab import RelayError

RESOURCES = ("aliases", "domains", "keys", "upstreams", "suppressions", "usage", "messages", "send", "webhooks",
             "health", "auth")


@pytest.mark.parametrize("name", RESOURCES)
def test_each_resource_module_has_a_module_level_router_the_app_includes(name):
    module = importlib.import_module(f"relay.api.{name}")
    assert isinstance(module.router, APIRouter)
    assert module.router in ROUTERS


def test_no_route_takes_a_gateway():
    """Routes get their services and identity through Depends, never a gateway object."""
    endpoints = [r.endpoint for router in ROUTERS for r in router.routes]
    assert len(endpoints) >= 29
    for endpoint in endpoints:
        assert "gateway" not in inspect.signature(endpoint).parameters, endpoint.__qualname__
        assert "<locals>" not in endpoint.__qualname__, endpoint.__qualname__  # not a closure


def test_an_http_send_has_the_pipelines_recipient_limit():
    assert MAX_TO + MAX_CC + MAX_BCC == API_MAX_RECIPIENTS


def test_recipients_are_unique_case_insensitively_in_order():
    assert unique_recipients(("a@x.org", "B@x.org"), ("b@x.org", "c@x.org"), ("A@X.ORG",)) == (
        "a@x.org", "B@x.org", "c@x.org")


def test_only_the_suppression_status_means_suppressed():
    assert is_suppression(RelayError(550, "5.7.1", "Recipient address rejected", http_status=422))
    assert not is_suppression(RelayError(451, "4.7.1", "Too much mail", http_status=429))
    assert not is_suppression(RelayError(550, "5.7.1", "Relay access denied"))
