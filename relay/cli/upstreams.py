"""``relay upstream``: upstream relays (SES, Mailgun, a smarthost...), each serving one IP pool.

``relay pool`` is the former name of this group, kept as a deprecated alias: the same commands and
options, after a one-line note on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import click

from relay.cli.base import Ctx, command, table
from relay.vocab import Invalid

PASSWORD_ENV = "RELAY_UPSTREAM_PASSWORD"


@click.group("upstream")
def upstream() -> None:
    """Upstream relays (SES, Mailgun, a smarthost...) grouped in IP pools."""


def read_password(*, stdin: TextIO | None, env_var: str | None, environ: Mapping[str, str],
                  username: str | None) -> str | None:
    """The password, never from the command line: the first line of ``stdin`` (when given), the named
    environment variable, else ``RELAY_UPSTREAM_PASSWORD``. A username needs one."""
    password = None
    if stdin is not None:
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise Invalid("--password-stdin: the password read from stdin is empty", field="password")
    elif env_var:
        if env_var not in environ:
            raise Invalid(f"environment variable {env_var} is not set", field="password")
        password = environ[env_var]
        if not password:
            raise Invalid(f"--password-env: environment variable {env_var} is empty", field="password")
    elif environ.get(PASSWORD_ENV):
        password = environ[PASSWORD_ENV]
    if username and not password:
        raise Invalid("--username needs a password: --password-stdin or --password-env VAR", field="password")
    return password


@command(upstream, "add")
@click.argument("name")
@click.option("--ip-pool", required=True, help="IP pool this upstream serves (e.g. default, transactional).")
@click.option("--host", required=True, help="Host name or address of the upstream relay.")
@click.option("--port", required=True, type=int, help="Its port (587 STARTTLS, 465 implicit TLS, 25...).")
@click.option("--encryption", required=True, type=click.Choice(["tls", "ssl", "none"]),
              help="tls = STARTTLS, ssl = implicit TLS, none = plain.")
@click.option("--username", default=None, help="AUTH user name (then a password is needed: see --password-stdin).")
@click.option("--password-env", default=None, metavar="VAR",
              help=f"Read the password from this environment variable (default: {PASSWORD_ENV}).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--priority", default=0, type=int, help="Lower is tried first.")
@click.option("--weight", default=1, type=int, help="Share of load among upstreams of one priority.")
@click.option("--max-connections", default=None, type=int,
              help="Open sessions to this upstream at most (default: [delivery] max_connections).")
@click.option("--no-verify-tls", is_flag=True, help="Do not verify the upstream's certificate.")
@click.option("--account", default=None, metavar="NAME",
              help="The account that owns it (in one of that account's own IP pools, which carry only its "
                   "mail; its host must be public unless [security] allow_targets). Default: the operator's.")
def upstream_add(ctx: Ctx, name: str, ip_pool: str, host: str, port: int, encryption: str, username: str | None,
                 password_env: str | None, password_stdin: bool, priority: int, weight: int,
                 max_connections: int | None, no_verify_tls: bool, account: str | None):
    """Define an upstream relay. The password never goes on the command line."""
    from relay.services.upstreams import check_host

    password = read_password(stdin=sys.stdin if password_stdin else None, env_var=password_env,
                             environ=os.environ, username=username)
    if account is not None:
        ctx.store.directory.get_account(account)  # an unknown account fails before the DNS lookup
        asyncio.run(check_host(ctx.settings, host, port))
    rec = ctx.admin.add_upstream(name=name, ip_pool=ip_pool, host=host, port=port, encryption=encryption,
                                 username=username, password=password, verify_tls=False if no_verify_tls else None,
                                 priority=priority, weight=weight, max_connections=max_connections, account=account)
    owner = f"account {account}" if account else "the operator"
    return rec, (f"upstream {rec.name} ({rec.host}:{rec.port}, {rec.encryption}) added to IP pool {rec.ip_pool} "
                 f"of {owner}")


@command(upstream, "list")
@click.option("--ip-pool", default=None, help="Only the upstreams of this IP pool.")
@click.option("--account", default=None, metavar="NAME", help="Only the upstreams of this account's IP pools.")
def upstream_list(ctx: Ctx, ip_pool: str | None, account: str | None):
    """Upstreams with their IP pool and owner (operator, or the account whose pool it serves)."""
    directory = ctx.store.directory
    account_id = directory.get_account(account).id if account else None
    recs = directory.list_upstreams(ip_pool, account_id=account_id)
    names = {a.id: a.name for a in directory.list_accounts()}
    return recs, table([[r.name, r.ip_pool, names.get(r.account_id, "?") if r.account_id else "operator",
                         f"{r.host}:{r.port}", r.encryption, r.username, r.priority, r.weight,
                         "active" if r.is_active else "inactive"] for r in recs],
                       ["NAME", "IP POOL", "OWNER", "ADDRESS", "TLS", "USER", "PRIO", "WEIGHT", "STATE"])


@command(upstream, "remove")
@click.argument("name")
def upstream_remove(ctx: Ctx, name: str):
    """Remove the upstream NAME (its IP pool's mail goes through the pool's other upstreams)."""
    ctx.admin.remove_upstream(name)
    return {"success": True, "removed": name}, f"upstream {name} removed"


@command(upstream, "test")
@click.argument("name")
def upstream_test(ctx: Ctx, name: str):
    """EHLO, TLS and AUTH against the upstream, without sending mail."""
    from relay.services.upstreams import probe

    rec = ctx.store.directory.get_upstream(name)
    result = asyncio.run(probe(ctx.settings, ctx.admin, rec))
    text = f"{result['message']} ({result['latencyMs']} ms)" + (f": {result['error']}" if "error" in result else "")
    return result, text, 0 if result["success"] else 1


DEPRECATION = "relay: `relay pool` is deprecated; use `relay upstream` (same commands and options)"


@click.group("pool", commands=upstream.commands)
def pool() -> None:
    """Deprecated alias of `relay upstream` (same commands and options)."""
    click.echo(DEPRECATION, err=True)
