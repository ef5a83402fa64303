"""``relay alias``: sending aliases, verified From addresses each routed to an IP pool."""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command, table


@click.group("alias")
def alias() -> None:
    """Sending aliases: verified From addresses, each routed to an IP pool."""


@command(alias, "add")
@click.argument("email")
@click.option("--account", required=True, metavar="NAME", help="The account that sends as this address.")
@click.option("--ip-pool", default="default", show_default=True,
              help="IP pool its mail goes through (the account's own, or an operator pool open or granted to it).")
@click.option("--name", default=None, help="Display name.")
@click.option("--default", "is_default", is_flag=True, help="Make it the account's default alias.")
def alias_add(ctx: Ctx, email: str, account: str, ip_pool: str, name: str | None, is_default: bool):
    """Create an alias; a verification email goes to the address."""
    rec, queue_id = ctx.admin.add_alias(email, account=account, ip_pool=ip_pool, name=name, is_default=is_default)
    warning = ctx.admin.system_route_gap(rec.ip_pool)
    if warning and not ctx.as_json:
        click.echo(f"relay: warning: {warning}", err=True)
    return ({"alias": rec, "verification_queue_id": queue_id, "warning": warning},
            (f"alias {rec.email} ({rec.id}) created on IP pool {rec.ip_pool}; verification email queued as "
             f"{queue_id}.\nIt cannot send until the link in that email is confirmed "
             f"(or `relay alias verify {rec.email}`)."))


@command(alias, "verify")
@click.argument("email")
def alias_verify(ctx: Ctx, email: str):
    """Mark an alias verified without the emailed link (sysadmin override)."""
    rec = ctx.admin.verify_alias(email=email)
    return rec, f"alias {rec.email} verified"


@command(alias, "resend")
@click.argument("email")
def alias_resend(ctx: Ctx, email: str):
    """Send a new verification link to an unverified alias (the previous link stops working)."""
    rec, queue_id = ctx.admin.resend_verification(email)
    return ({"alias": rec, "verification_queue_id": queue_id},
            f"verification email for {rec.email} queued as {queue_id}")


@command(alias, "list")
@click.option("--account", default=None, metavar="NAME", help="Only this account's aliases.")
def alias_list(ctx: Ctx, account: str | None):
    """Sending aliases: IP pool, display name, default, verified or not."""
    recs = ctx.store.directory.list_aliases(account)
    return recs, table([[r.email, r.id, r.ip_pool, r.name, "yes" if r.is_default else "",
                         "verified" if r.verified else "unverified"] for r in recs],
                       ["EMAIL", "ID", "IP POOL", "NAME", "DEFAULT", "STATE"])


@command(alias, "remove")
@click.argument("email")
def alias_remove(ctx: Ctx, email: str):
    """Remove an alias: not the account's only verified one, nor one that queued mail still uses."""
    ctx.admin.remove_alias(email)
    return {"success": True, "removed": email}, f"alias {email} removed"
