"""Loading: built-in defaults, then the TOML file, then ``RELAY_*`` env overrides, validated once.

:func:`load_settings` reads the file (``RELAY_CONFIG`` when no path is given);
:func:`settings_from_dict` does the layering and validation on an already-parsed document. Every
problem is a :class:`relay.vocab.ConfigError` naming the dotted key, the bad value and its source.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relay.ops.config.env import ENV_CONFIG, apply_env
from relay.ops.config.errors import show_value, source_of, to_config_error
from relay.ops.config.schema import Settings
from relay.vocab import ConfigError

__all__ = ["load_settings", "settings_from_dict"]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config: {path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config: {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path}: invalid TOML: not UTF-8") from None


def _collect_policy_options(raw: dict[str, Any], sources: Mapping[tuple[str, ...], str]) -> None:
    policies = raw.get("policies")
    if not isinstance(policies, dict):
        return
    options: dict[str, Any] = {}
    for name in [k for k in policies if k != "enabled"]:
        table = policies.pop(name)
        if not isinstance(table, dict):
            source = source_of(("policies", name), sources)
            raise ConfigError(
                f"config: policies.{name}: invalid value {show_value(table, '')} "
                f"(expected a [policies.{name}] table of that policy's settings) (from {source})"
            )
        options[name] = table
    policies["options"] = options


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else list(v) if isinstance(v, list) else v for k, v in data.items()}


def _walk_sources(data: Mapping[str, Any], prefix: tuple[str, ...], label: str, out: dict[tuple[str, ...], str]) -> None:
    for key, value in data.items():
        path = prefix + (str(key),)
        out[path] = label
        if isinstance(value, Mapping) and len(path) < 3:
            _walk_sources(value, path, label, out)


def settings_from_dict(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    source: str = "file",
) -> Settings:
    """Build :class:`Settings` from an already-parsed TOML document plus env overrides.

    *data* has the file's shape (``[policies.<name>]`` tables included); *env* defaults to no
    overrides here (unlike :func:`load_settings`). *source* labels file values in error messages.
    """
    env = env or {}
    raw = _deep_copy(data)
    sources: dict[tuple[str, ...], str] = {}
    _walk_sources(raw, (), source, sources)
    apply_env(raw, env, sources)
    _collect_policy_options(raw, sources)
    # errors under policies.options.<name> point back at policies.<name>
    sources.update({("policies", "options") + k[1:]: v for k, v in sources.items() if k[:1] == ("policies",)})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise to_config_error(exc, sources) from None


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the configuration: defaults, then the TOML file, then ``RELAY_*`` env overrides.

    *path* None means env ``RELAY_CONFIG`` if set (and non-empty), else no file. A named file that
    does not exist is an error. *env* defaults to ``os.environ``. Raises :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG, "").strip():
        path = env[ENV_CONFIG].strip()
    file: Path | None = None
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        data = _read_file(file)
    settings = settings_from_dict(data, env, source=f"file {file}" if file else "file")
    settings._source = file
    return settings

