"""The ``relay`` root group and what every command group shares: the context (settings, store and
Admin service, opened on first use), the ``--json`` command decorator with its error mapping, and the
table renderer. The command groups import this module; it imports none of them
(:mod:`relay.cli.main` assembles them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from relay.ops.files import private_dir, private_process
from relay.vocab import ConfigError, Conflict, Forbidden, Invalid, NotEnabled, NotFound, Unavailable

#: The exit codes of every command (README "Commands", ``relay --help``).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3
EXIT_CODES_HELP = ("Exit codes: 0 done; 1 not found, conflict or refused; 2 usage or bad input "
                   "(options, configuration); 3 cannot reach the store (no data directory, database down).")

ENV_DATA_DIR = "RELAY_DATA_DIR"


class StoreUnreachable(Exception):
    """The store cannot be opened: no data directory where one was expected, or the database is down."""


# refusals -> exit code (2: the input is wrong; 1: the state does not allow it; 3: no store to ask)
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (Invalid, EXIT_USAGE), (ConfigError, EXIT_USAGE), (NotFound, EXIT_REFUSED), (Conflict, EXIT_REFUSED),
    (Forbidden, EXIT_REFUSED), (Unavailable, EXIT_REFUSED), (NotEnabled, EXIT_REFUSED), (StoreUnreachable, EXIT_STORE))
REFUSALS = tuple(cls for cls, _ in EXIT_CODES)


def jsonable(obj: Any) -> Any:
    """Records (dataclasses), lists, sets and datetimes as JSON values; fields with repr=False are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, (list, tuple)):
        return [jsonable(x) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return obj


class Ctx:
    """What a command needs, each opened on first use: a command that fails on its arguments opens nothing."""

    def __init__(self, config: str | None, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = os.environ if env is None else env
        self._settings = None
        self._store = None
        self._admin = None
        self.as_json = False  # the command's --json: long work stays quiet (relay.cli.progress)
        self.may_create = False  # ``relay init``: the data directory may be created here

    @property
    def settings(self):
        if self._settings is None:
            from relay.ops.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    def check_data_dir(self) -> None:
        """Refuse to create a data directory by accident: with no configuration file and no
        RELAY_DATA_DIR, the default ``./relay-data`` must exist already (``relay init`` or ``relay serve``
        creates it). With either, the directory is created as needed."""
        s = self.settings
        explicit = s.source_path is not None or bool(self.env.get(ENV_DATA_DIR, "").strip())
        if explicit or self.may_create or s.data_dir.is_dir():
            return
        raise StoreUnreachable(
            f"no data directory at {s.data_dir} (no --config, RELAY_CONFIG or RELAY_DATA_DIR given, so the default "
            f"./relay-data of the working directory was looked for): run this where the gateway keeps its data, "
            f"give --config FILE (env RELAY_CONFIG) or env RELAY_DATA_DIR, or create a new one here with `relay init`")

    @property
    def store(self):
        if self._store is None:
            from relay.ops.config import mask_url
            from relay.store import Store, node_id

            self.check_data_dir()
            s = self.settings
            store = Store(s.database_url, node_id=node_id(s.data_dir))
            try:
                store.migrate()
            except Exception as exc:  # the database is down, refuses us, or the file cannot be opened
                store.close()
                reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoreUnreachable(f"cannot reach the store {mask_url(s.database_url)}: {reason}") from exc
            self._store = store
        return self._store

    @property
    def admin(self):
        if self._admin is None:
            from relay.secrets import load_or_create_master_key
            from relay.services.admin import Admin

            self.check_data_dir()
            private_dir(self.settings.data_dir)
            self._admin = Admin(self.settings, self.store, load_or_create_master_key(self.settings.master_key_path))
        return self._admin


def exit_code(exc: Exception) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def command(group: click.Group | None, name: str, **kw: Any) -> Callable:
    """A (sub)command with ``--json``, and the services' refusals turned into a clear message and exit code.

    The function returns None, or ``(data, text)`` (``data`` printed under --json, else ``text``), or
    ``(data, text, code)``: a non-zero code sends the text to stderr and exits with it."""

    def deco(fn: Callable) -> Callable:
        @(click.command(name, **kw) if group is None else group.command(name, **kw))
        @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
        @click.pass_obj
        @functools.wraps(fn)
        def wrapper(ctx: Ctx, as_json: bool, **kwargs: Any) -> None:
            ctx.as_json = as_json
            try:
                result = fn(ctx, **kwargs)
            except REFUSALS as exc:
                if as_json:
                    click.echo(json.dumps({"success": False, "error": str(exc)}))
                else:
                    click.echo(f"relay: {exc}", err=True)
                sys.exit(exit_code(exc))
            if result is None:
                return
            data, text, *rest = result
            if as_json:
                click.echo(json.dumps(jsonable(data), indent=2))
            elif text:
                click.echo(text, err=bool(rest and rest[0]))
            if rest and rest[0]:
                sys.exit(rest[0])

        return wrapper

    return deco


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Left-aligned columns; None shows as ``-``."""
    if not rows:
        return "(none)"
    cols = [header] + [[str(c) if c is not None else "-" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option("--config", "config", envvar="RELAY_CONFIG", type=click.Path(dir_okay=False),
              help="TOML config file (default: env RELAY_CONFIG, else built-in defaults and ./relay-data).")
@click.pass_context
def main(click_ctx: click.Context, config: str | None) -> None:
    """Relay: a self-hosted SMTP submission gateway.

    Every command that prints data takes --json (JSON on stdout, errors included)."""
    private_process()  # the data dir and what is written there stay private, whatever the umask
    click_ctx.obj = Ctx(config)
