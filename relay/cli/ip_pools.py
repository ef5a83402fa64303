"""``relay ip-pool``: who may use which IP pool.

An operator IP pool (its upstreams added without ``--account``) is open to every account until
``relay ip-pool restrict NAME``; then only the accounts given ``relay ip-pool grant NAME --account A``
may point an alias at it or send through it. An account's own IP pool is always its alone.
"""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command, table
from relay.store.records import PoolRec


@click.group("ip-pool")
def ip_pool() -> None:
    """Who may use which IP pool: restrict an operator pool, grant it to accounts."""


def _names(ctx: Ctx) -> dict[str, str]:
    return {a.id: a.name for a in ctx.store.directory.list_accounts()}


def _view(rec: PoolRec, names: dict[str, str]) -> dict[str, object]:
    return {"name": rec.name, "owner": names.get(rec.account_id, "?") if rec.account_id else "operator",
            "restricted": rec.restricted, "granted": sorted(names.get(a, a) for a in rec.granted),
            "created_at": rec.created_at}


def _who(view: dict[str, object]) -> str:
    if view["owner"] != "operator":
        return f"account {view['owner']} only"
    if not view["restricted"]:
        return "every account"
    granted = view["granted"]
    return "granted accounts: " + (", ".join(granted) if isinstance(granted, list) and granted else "none")


@command(ip_pool, "list")
def pool_list(ctx: Ctx):
    """Every IP pool: its owner and who may use it."""
    names = _names(ctx)
    views = [_view(p, names) for p in ctx.admin.pools()]
    return views, table([[v["name"], v["owner"], _who(v)] for v in views], ["IP POOL", "OWNER", "USABLE BY"])


@command(ip_pool, "restrict")
@click.argument("name")
def pool_restrict(ctx: Ctx, name: str):
    """Only accounts granted operator pool NAME may use it (mail already queued still goes)."""
    view = _view(ctx.admin.restrict_pool(name), _names(ctx))
    return view, f"IP pool {name}: {_who(view)}"


@command(ip_pool, "open")
@click.argument("name")
def pool_open(ctx: Ctx, name: str):
    """Undo `restrict`: every account may use operator pool NAME again."""
    view = _view(ctx.admin.restrict_pool(name, False), _names(ctx))
    return view, f"IP pool {name}: {_who(view)}"


@command(ip_pool, "grant")
@click.argument("name")
@click.option("--account", required=True, metavar="NAME", help="The account allowed to use the pool.")
def pool_grant(ctx: Ctx, name: str, account: str):
    """Let ACCOUNT use restricted operator pool NAME."""
    view = _view(ctx.admin.grant_pool(name, account), _names(ctx))
    return view, f"IP pool {name}: {_who(view)}"


@command(ip_pool, "revoke")
@click.argument("name")
@click.option("--account", required=True, metavar="NAME", help="The account to take the pool from.")
def pool_revoke(ctx: Ctx, name: str, account: str):
    """Take restricted operator pool NAME from ACCOUNT (its new mail through NAME is refused: 550 5.7.1)."""
    view = _view(ctx.admin.revoke_pool(name, account), _names(ctx))
    return view, f"IP pool {name}: {_who(view)}"
