"""relay.delivery.aiosmtplib_compat: the version check, and no library internals outside it."""

from __future__ import annotations

import ast
import importlib.metadata
import asyncio
from pathlib import Path

import pytest
from aiosmtplib.protocol import SMTPProtocol

import relay.delivery
from relay.delivery import aiosmtplib_compat


def test_the_installed_aiosmtplib_is_one_the_compat_module_was_written_for():
    import aiosmtplib

    assert aiosmtplib_compat.check() == aiosmtplib.__version__


@pytest.mark.parametrize("version", ["5.1.3", "5.1.4", "5.9.0", "5.2.0.post1"])
def test_versions_in_range_pass(monkeypatch, version):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    assert aiosmtplib_compat.check() == version


@pytest.mark.parametrize("version", ["5.1.2", "5.0.0", "4.0.1", "6.0.0", "6.0.0rc1", "7.1"])
def test_versions_out_of_range_are_refused_naming_the_library_and_version(monkeypatch, version):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    with pytest.raises(RuntimeError, match=rf"aiosmtplib {version} is installed.*>=5\.1\.3,<6\.0\.0"):
        aiosmtplib_compat.check()


class _Transport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self) -> bool:
        return False

    def write(self, data) -> None:
        self.written += data


async def test_the_reply_to_data_written_on_aiosmtplibs_protocol_is_read_even_if_it_comes_first():
    """What write_expecting_reply relies on, in the installed aiosmtplib: a reply nothing expects
    is dropped; one to data written through it is kept until read_response is awaited."""
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(b"220 greeting\r\n")
    assert (await protocol.read_response(timeout=1)).message == "greeting"
    protocol.data_received(b"250 nobody asked\r\n")  # dropped
    aiosmtplib_compat.write_expecting_reply(protocol, b"body\r\n.\r\n")
    protocol.data_received(b"250 2.0.0 taken\r\n")  # before read_response is awaited
    response = await protocol.read_response(timeout=1)
    assert (response.code, response.message, transport.written) == (250, "2.0.0 taken", b"body\r\n.\r\n")


def _foreign_private_attributes(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``: another object's private attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_no_private_attribute_of_another_object_outside_compat_modules():
    package = Path(relay.delivery.__file__).parent
    found = [hit for path in sorted(package.glob("*.py")) if "compat" not in path.name
             for hit in _foreign_private_attributes(path)]
    assert found == []
