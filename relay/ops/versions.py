"""The version check every compat module makes at start-up: the installed distribution must be in
the range the module was written for, else start-up stops naming the library and the version."""

from __future__ import annotations

import importlib.metadata
import re

from relay.vocab import ConfigError


class UnsupportedVersion(ConfigError, RuntimeError):
    """A library version a compat module was not written for."""


def release(version: str) -> tuple[int, ...]:
    """The leading release numbers ("1.1.8" -> (1, 1, 8); "1.2.0rc1" -> (1, 2, 0): the release it leads to)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, numbers))


def require(library: str, low: tuple[int, ...], below: tuple[int, ...], module: str) -> str:
    """The installed version of ``library`` if ``low <= version < below``; UnsupportedVersion otherwise."""
    try:
        installed = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        installed = "(not installed)"
    if not low <= release(installed) < below:
        raise UnsupportedVersion(f"{library} {installed} is installed, but {module} is written for "
                                 f"{library} >={dotted(low)},<{dotted(below)}; install a version in that range")
    return installed
