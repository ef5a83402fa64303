"""relay.ops.uvicorn_compat: the start-up version check, and a Server that leaves the process's
signal handlers to the gateway (checked against uvicorn's own Server, which takes them)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
from typing import Any

import pytest
import uvicorn

from relay.ops import uvicorn_compat


def _installed(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    real = importlib.metadata.version

    def fake(name: str) -> str:
        return version if name == "uvicorn" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)


def test_check_passes_on_the_installed_uvicorn() -> None:
    assert uvicorn_compat.check() == importlib.metadata.version("uvicorn")


@pytest.mark.parametrize("version", ["0.29.0", "0.55.0", "0.55.1.post1"])
def test_check_accepts_the_supported_range(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _installed(monkeypatch, version)
    assert uvicorn_compat.check() == version


@pytest.mark.parametrize("version", ["0.28.1", "0.20.0", "0.56.0", "0.56.0rc1", "1.0.0", "unknown"])
def test_check_refuses_other_versions_naming_library_and_version(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    _installed(monkeypatch, version)
    with pytest.raises(RuntimeError) as raised:
        uvicorn_compat.check()
    assert f"uvicorn {version} is installed" in str(raised.value)
    assert uvicorn_compat.SUPPORTED in str(raised.value)


def test_check_refuses_a_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(RuntimeError, match="uvicorn"):
        uvicorn_compat.check()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _handlers_while_serving(server_class: type[uvicorn.Server]) -> dict[signal.Signals, Any]:
    """The SIGINT/SIGTERM handlers while a ``server_class`` serves on a free loopback port."""
    server = server_class(uvicorn.Config(_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.should_exit = True
    await task
    return handlers


async def test_server_leaves_the_signal_handlers_alone() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert await _handlers_while_serving(uvicorn_compat.Server) == before
    # uvicorn's own Server takes them while it serves (so the override above is what counts) ...
    assert await _handlers_while_serving(uvicorn.Server) != before
    # ... and gives them back.
    assert {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} == before
