"""``relay account``: who sends."""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command, table


@click.group("account")
def account() -> None:
    """Accounts: who sends."""


@command(account, "create")
@click.argument("name")
def account_create(ctx: Ctx, name: str):
    """Create the account NAME (it owns keys, domains, aliases and suppressions)."""
    rec = ctx.admin.create_account(name)
    return rec, f"account {rec.name} created ({rec.id})"


@command(account, "list")
def account_list(ctx: Ctx):
    """Every account: name, id, creation date."""
    recs = ctx.store.directory.list_accounts()
    return recs, table([[r.name, r.id, r.created_at.date()] for r in recs], ["NAME", "ID", "CREATED"])


@command(account, "remove")
@click.argument("name")
def account_remove(ctx: Ctx, name: str):
    """Remove the account NAME."""
    ctx.admin.remove_account(name)
    return {"success": True, "removed": name}, f"account {name} removed"
