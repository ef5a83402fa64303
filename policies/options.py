"""Helpers for built-in policies: validating their ``[policies.<name>]`` table, and "now"."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from policies.spec import option_error
from relay.vocab import ConfigError


class Options:
    """Typed reads of one policy's settings; every error names ``policies.<name>.<key>`` and the value."""

    def __init__(self, policy: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
        self.policy = policy
        self.raw = dict(options or {})
        known = set(known)
        for key in self.raw:
            if key not in known:
                raise ConfigError(f"config: policies.{policy}.{key}: unknown key "
                                  f"(known: {', '.join(sorted(known)) or 'none'})")

    def error(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(option_error(self.policy, key, value, expected))

    def int(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, value, f"expected an integer >= {minimum}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or value != value:
            raise self.error(key, value, f"expected a number >= {minimum:g}")
        return float(value)
