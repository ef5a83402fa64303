"""Environment overrides: ``RELAY_<SECTION>_<KEY>`` and ``RELAY_<KEY>`` onto the file's raw table.

The variable names are built from the schema's fields, so keys containing underscores are matched
exactly, never split. A value is parsed as a TOML value when it is one, else taken as the raw string;
list-of-string keys also accept ``a,b,c``. Keys of the ``[policies.<name>]`` tables present in the
file are overridable as ``RELAY_POLICIES_<POLICY>_<KEY>``.
"""

from __future__ import annotations

import difflib
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from relay.ops.config.schema import Settings
from relay.vocab import ConfigError

__all__ = ["ENV_CONFIG", "ENV_MASTER_KEY", "ENV_PREFIX", "apply_env", "env_names"]

ENV_PREFIX = "RELAY_"
ENV_CONFIG = "RELAY_CONFIG"
ENV_MASTER_KEY = "RELAY_MASTER_KEY"
#: RELAY_* variables that are not settings keys but are read by Relay elsewhere (not refused).
ENV_OTHERS = frozenset({ENV_CONFIG, ENV_MASTER_KEY, "RELAY_UPSTREAM_PASSWORD"})
#: A variable this close to a settings key's name (difflib ratio) is taken for a typo of it.
TYPO_CUTOFF = 0.85


def _section_models() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = annotation
    return sections


_SECTIONS = _section_models()


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _env_kind(annotation: Any) -> str:
    """How an env string is turned into a value: 'str', 'strlist' or 'toml'."""
    annotation = _strip_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return "strlist" if _strip_annotated(item) is str else "toml"
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if origin is not None else [annotation]
    if args and all(_strip_annotated(a) in (str, Path) for a in args):
        return "str"
    return "toml"


def _build_env_map() -> dict[str, tuple[tuple[str, ...], str]]:
    """env name -> (key path, kind), from the models' fields."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}

    def add(name: str, path: tuple[str, ...], kind: str) -> None:
        if name in out or name in (ENV_CONFIG, ENV_MASTER_KEY):
            raise RuntimeError(f"config: ambiguous environment variable {name}")  # programming error
        out[name] = (path, kind)

    for name, field in Settings.model_fields.items():
        if name in _SECTIONS:
            for key, sub in _SECTIONS[name].model_fields.items():
                if name == "policies" and key == "options":
                    continue  # per-policy keys are mapped from the file, see _policy_env_map
                add(f"{ENV_PREFIX}{name.upper()}_{key.upper()}", (name, key), _env_kind(sub.annotation))
        else:
            add(f"{ENV_PREFIX}{name.upper()}", (name,), _env_kind(field.annotation))
    return out


_ENV_MAP = _build_env_map()


def env_names() -> dict[str, str]:
    """``{env variable: dotted key}`` for every settings key (policy sub-tables excluded)."""
    return {name: ".".join(path) for name, (path, _) in _ENV_MAP.items()}


def _env_token(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def _policy_env_map(raw: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
    """env name -> key path for the keys of the ``[policies.<name>]`` tables present in the file."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    policies = raw.get("policies")
    if not isinstance(policies, Mapping):
        return out
    for policy, table in policies.items():
        if policy == "enabled" or not isinstance(table, Mapping):
            continue
        for key in table:
            name = f"{ENV_PREFIX}POLICIES_{_env_token(policy)}_{_env_token(str(key))}"
            if name not in _ENV_MAP:
                out.setdefault(name, (("policies", policy, str(key)), "toml"))
    return out


def _parse_env_value(value: str, kind: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        if kind == "strlist":
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
    if kind == "str" and not isinstance(parsed, str):
        return value
    if kind == "strlist" and isinstance(parsed, str):
        return [item.strip() for item in parsed.split(",") if item.strip()]
    return parsed



def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return False  # the file already has a non-table here; its error is reported instead
        node = child
    node[path[-1]] = value
    return True


def unknown_env_error(name: str, env_map: Mapping[str, object]) -> ConfigError | None:
    """The error for a ``RELAY_*`` variable that names no settings key, or None when it is left alone.

    Refused: a name under a section's prefix (``RELAY_SMTP_...``) and a near miss of a key's name
    (``RELAY_DATADIR``). Left alone: Relay's other variables (:data:`ENV_OTHERS`) and names far from
    every key (``RELAY_TEST_PG``: other tools share the prefix)."""
    if name in ENV_OTHERS:
        return None
    section = next((f"{ENV_PREFIX}{s.upper()}_" for s in _SECTIONS if name.startswith(f"{ENV_PREFIX}{s.upper()}_")), None)
    close = difflib.get_close_matches(name, list(env_map), n=1, cutoff=TYPO_CUTOFF)
    if section is None and not close:
        return None
    if not close:
        close = difflib.get_close_matches(name, [n for n in env_map if n.startswith(section or "")] or list(env_map),
                                          n=1, cutoff=0.0)
    hint = f"; the closest known is {close[0]}" if close else ""
    if section == f"{ENV_PREFIX}POLICIES_":
        hint += " (a policy's settings are overridable from env when its [policies.<name>] table in the file has the key)"
    return ConfigError(f"config: unknown environment variable {name}: it names no settings key{hint}")


def apply_env(raw: dict[str, Any], env: Mapping[str, str], sources: dict[tuple[str, ...], str]) -> None:
    """Write the ``RELAY_*`` overrides in *env* into *raw* (the file's shape), recording each in *sources*.

    A variable that names no key but looks meant for one (see :func:`unknown_env_error`) raises
    :class:`ConfigError` naming it and the closest known name; other ``RELAY_*`` names are ignored.
    """
    env_map = dict(_ENV_MAP)
    env_map.update(_policy_env_map(raw))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in (ENV_CONFIG, ENV_MASTER_KEY):
            continue
        entry = env_map.get(name)
        if entry is None:
            error = unknown_env_error(name, env_map)
            if error is not None:
                raise error
            continue
        path, kind = entry
        if _set(raw, path, _parse_env_value(env[name], kind)):
            sources[path] = f"env {name}"
