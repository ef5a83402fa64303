"""Error translation: pydantic's validation errors into one :class:`ConfigError` naming each key.

Each line reads ``config: <dotted key>: invalid value <value> (expected ...) (from <source>)``, the
source being the file or the env variable the value came from. ``database.url`` is shown masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from relay.ops.config.values import mask_url
from relay.vocab import ConfigError

__all__ = ["show_value", "source_of", "to_config_error"]


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def show_value(value: Any, key: str) -> str:
    """*value* as shown in an error: its repr, cut to 120 characters, a ``database.url`` masked."""
    if key == "database.url" and isinstance(value, str):
        value = mask_url(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "path_type": "expected a path",
}


def _expected(error: Mapping[str, Any]) -> str:
    kind, msg, ctx = error["type"], error["msg"], error.get("ctx") or {}
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind == "greater_than":
        return f"expected a value > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"expected a value >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"expected a value <= {ctx.get('le')}"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if msg.startswith("Input should be "):
        return "expected " + msg.removeprefix("Input should be ")
    return msg[:1].lower() + msg[1:]


def source_of(loc: tuple[Any, ...], sources: Mapping[tuple[str, ...], str]) -> str:
    """Where the value at *loc* came from; for a whole-table error, every source inside the table."""
    key = tuple(str(p) for p in loc)
    below = sorted({v for k, v in sources.items() if len(k) > len(key) and k[: len(key)] == key})
    if below:
        return ", ".join(below)
    for n in range(len(key), 0, -1):
        if key[:n] in sources:
            return sources[key[:n]]
    return "defaults"


def to_config_error(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> ConfigError:
    """One :class:`ConfigError`, a line per error, each naming the key, the value and its source."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = _dotted(loc)
        source = source_of(loc, sources)
        if error["type"] == "extra_forbidden":
            lines.append(f"config: {key}: unknown key (from {source})")
        elif error["type"] == "missing":
            lines.append(f"config: {key}: missing required key (from {source})")
        elif isinstance(error.get("input"), Mapping) and error["type"] == "value_error":
            lines.append(f"config: {key}: {_expected(error)} (from {source})")
        else:
            lines.append(
                f"config: {key}: invalid value {show_value(error.get('input'), key)} ({_expected(error)}) (from {source})"
            )
    return ConfigError("\n".join(lines))

