"""Fixtures of the whole-gateway tests."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import free_port
from tests.support.api import start_api
from tests.support.crash import Node


@pytest.fixture
async def api(gateway_factory, sink_factory):
    """A running gateway with an account, a verified alias and a key of every scope, and an HTTP client."""
    a = await start_api(gateway_factory, sink_factory)
    async with a.client:
        yield a


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Provisioned once with the CLI (~1 s a command); each test runs on its own copy of the data dir.
    The upstream points at a port nobody listens on until a test starts its sink there."""
    n = Node(tmp_path_factory.mktemp("template"), free_port())
    n.provision()
    return n


@pytest.fixture
def node(tmp_path, template):
    nodes: list[Node] = []

    def make() -> Node:
        n = Node(tmp_path, template.sink_port)
        shutil.copytree(template.tmp / "data", tmp_path / "data")
        n.key = template.key
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()
