"""``relay user``: the people who log in to the dashboard (an account's owners, admins and members).

The rules are :class:`relay.services.users.Users`'s (the same object the dashboard and the JSON routes
use), run here in a short event loop; the operator at the CLI manages every role of every account.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from relay.cli.base import Ctx, command, table
from relay.services.users import ROLES, Users
from relay.store.runner import DbRunner
from relay.throttle import AuthThrottle

T = TypeVar("T")


def run(ctx: Ctx, call: Callable[[Users], Coroutine[Any, Any, T]]) -> T:
    """``call(users)`` on a Users service of the CLI's store."""
    s = ctx.settings
    runner = DbRunner(ctx.store.dialect)
    try:
        users = Users(runner, ctx.store, s, AuthThrottle(s.smtp.auth_max_failures, s.smtp.auth_lockout))
        return asyncio.run(call(users))
    finally:
        runner.shutdown()


@click.group("user")
def user() -> None:
    """Dashboard users: owner, admin or member of one account."""


@command(user, "add")
@click.argument("email")
@click.option("--account", required=True, metavar="NAME", help="Account the user belongs to.")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="owner or admin: the account's full rights (admin: not over owners); member: read-only.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin (at least 10 characters). Without it, a one-time link to set it "
                   "is printed.")
def user_add(ctx: Ctx, email: str, account: str, role: str, password_stdin: bool):
    """Add the user EMAIL. Prints the one-time set-password link alone on stdout (valid api.password_link_ttl),
    unless --password-stdin."""
    password = sys.stdin.read().removesuffix("\n").removesuffix("\r") if password_stdin else None
    rec, link = run(ctx, lambda users: users.add(account, email, role, password))
    data = {"id": rec.id, "email": rec.email, "account": rec.account_name, "role": rec.role, "link": link}
    if link is None:
        return data, f"user {rec.email} ({rec.role}) added to account {rec.account_name}"
    if not ctx.as_json:
        click.echo(f"relay: user {rec.email} ({rec.role}) added to account {rec.account_name}; "
                   "send them this one-time link to set their password", err=True)
    return data, link


@command(user, "list")
@click.option("--account", required=True, metavar="NAME", help="The account whose users to list.")
def user_list(ctx: Ctx, account: str):
    """The account's users: email, role, whether a password is set (never the password)."""
    account_id = ctx.store.directory.get_account(account).id
    recs = run(ctx, lambda users: users.list(account_id))
    data = [{"id": r.id, "email": r.email, "account": r.account_name, "role": r.role,
             "has_password": r.has_password, "created_at": r.created_at} for r in recs]
    return data, table([[r.email, r.role, r.id, "set" if r.has_password else "pending link", r.created_at.date()]
                        for r in recs], ["EMAIL", "ROLE", "ID", "PASSWORD", "CREATED"])


@command(user, "remove")
@click.argument("email")
def user_remove(ctx: Ctx, email: str):
    """Remove the user EMAIL: its sessions end at once."""

    async def remove(users: Users) -> None:
        rec = await users.by_email(email)
        await users.remove(rec.account_id, rec.id)

    run(ctx, remove)
    return {"success": True, "removed": email.strip().lower()}, f"user {email.strip().lower()} removed"


@command(user, "reset-password")
@click.argument("email")
def user_reset_password(ctx: Ctx, email: str):
    """A new one-time set-password link for EMAIL, alone on stdout; its password and sessions stop working."""

    async def reset(users: Users) -> str:
        rec = await users.by_email(email)
        return await users.reset_password(rec.account_id, rec.id)

    link = run(ctx, reset)
    return {"success": True, "email": email.strip().lower(), "link": link}, link
