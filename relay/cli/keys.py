"""``relay key``: API keys (SMTP password or HTTP Bearer token)."""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command, table


@click.group("key")
def key() -> None:
    """API keys (SMTP password or HTTP Bearer token)."""


@command(key, "create")
@click.option("--account", required=True, help="Account the key belongs to.")
@click.option("--scopes", required=True, help="Comma separated: send, send:transactional, send:marketing, "
                                              "sandbox, aliases, admin (the account's own objects), operator "
                                              "(the gateway's: every upstream, /metrics; only this command gives it).")
@click.option("--name", default=None, help="A label for the key.")
def key_create(ctx: Ctx, account: str, scopes: str, name: str | None):
    """Create an API key: the key alone on stdout (so `KEY=$(relay key create ...)` works), the note on stderr."""
    full, rec = ctx.admin.create_key(account, scopes.split(","), name)
    data = {"id": rec.id, "key": full, "account": rec.account_name, "scopes": sorted(rec.scopes)}
    if not ctx.as_json:
        click.echo(f"relay: key {rec.id} for account {rec.account_name}; shown once, store it now", err=True)
    return data, full


@command(key, "list")
@click.option("--account", default=None, metavar="NAME", help="Only this account's keys.")
def key_list(ctx: Ctx, account: str | None):
    """API keys (ids, scopes, state; never the key itself)."""
    recs = ctx.store.directory.list_api_keys(account)
    return recs, table([[r.id, r.account_name, ",".join(sorted(r.scopes)), r.name, "revoked" if r.revoked else "active"]
                        for r in recs], ["ID", "ACCOUNT", "SCOPES", "NAME", "STATE"])


@command(key, "remove")
@click.argument("key_id")
def key_remove(ctx: Ctx, key_id: str):
    """Revoke the key KEY_ID (rk_xxxxxxxx): it stops working at once."""
    ctx.admin.revoke_key(key_id)
    return {"success": True, "revoked": key_id}, f"key {key_id} revoked"
