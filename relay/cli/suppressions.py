"""``relay suppression``: per-account suppression lists, with CSV import and export
(:mod:`relay.services.suppressions` reads and writes the CSV, and reaches the list through the
enabled policy that keeps it: without one, every command exits 1, "suppression policy is not enabled")."""

from __future__ import annotations

from typing import Any

import click

from relay.cli.base import Ctx, command, table
from relay.cli.progress import progress
from relay.services import suppressions as svc
from relay.services.suppressions import REASONS


@click.group("suppression")
def suppression() -> None:
    """Per-account suppression lists: addresses that are never sent to (RCPT gets 550 5.7.1)."""


def _changed(c: svc.Changed) -> str:
    return f"{c.added} added, {c.updated} updated on the suppression list of {c.account}"


@command(suppression, "add")
@click.argument("emails", nargs=-1, required=True)
@click.option("--account", required=True, metavar="NAME", help="Whose suppression list.")
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Why the addresses are suppressed.")
@click.option("--expires", default=None, help="When the entry lapses: a duration (30d, 12h, 90m, 2w) or an ISO "
                                              "date/time (UTC). Default: never.")
@click.option("--detail", default=None, help="A note kept with the entry.")
def suppression_add(ctx: Ctx, emails: tuple[str, ...], account: str, reason: str, expires: str | None,
                    detail: str | None):
    """Add addresses (or update their entries). New sessions see the change within seconds."""
    c, addrs = svc.from_cli(ctx.store, ctx.settings,
                            lambda s: s.add_addresses(account, emails, reason=reason, expires=expires, detail=detail))
    return ({"success": True, "account": c.account, "added": c.added, "updated": c.updated, "emails": addrs},
            _changed(c))


@command(suppression, "list")
@click.option("--account", required=True, metavar="NAME", help="Whose suppression list.")
@click.option("--reason", type=click.Choice(REASONS), default=None, help="Only entries with this reason.")
@click.option("--all", "include_expired", is_flag=True, help="Include expired entries.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1), help="At most this many entries.")
def suppression_list(ctx: Ctx, account: str, reason: str | None, include_expired: bool, limit: int):
    """The account's suppressed addresses, with reason, dates and detail."""
    recs = svc.from_cli(ctx.store, ctx.settings,
                        lambda s: s.listing(account, reason=reason, include_expired=include_expired, limit=limit))
    return ([svc.entry_dict(r) for r in recs],
            table([[r.address, r.reason, r.created_at.strftime("%Y-%m-%d %H:%M"),
                    r.expires_at.strftime("%Y-%m-%d %H:%M") if r.expires_at else "never", r.detail]
                   for r in recs], ["EMAIL", "REASON", "ADDED", "EXPIRES", "DETAIL"]))


@command(suppression, "remove")
@click.argument("emails", nargs=-1, required=True)
@click.option("--account", required=True, metavar="NAME", help="Whose suppression list.")
def suppression_remove(ctx: Ctx, emails: tuple[str, ...], account: str):
    """Take addresses off the list: mail to them is accepted again."""
    name, n, addrs = svc.from_cli(ctx.store, ctx.settings, lambda s: s.remove_addresses(account, emails))
    return ({"success": True, "account": name, "removed": n, "emails": addrs},
            f"{n} removed from the suppression list of {name}")


@command(suppression, "import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--account", required=True, metavar="NAME", help="Whose suppression list.")
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Reason for rows that give none.")
def suppression_import(ctx: Ctx, file: Any, account: str, reason: str):
    """Import the CSV file FILE ("-" for stdin): email[,reason[,expires_at[,detail]]], header row optional.

    All rows or none: a bad row stops the import and names the row."""
    text = file.read()
    c = svc.from_cli(ctx.store, ctx.settings, lambda s: s.import_csv(account, text, default_reason=reason))
    return {"success": True, "account": c.account, "added": c.added, "updated": c.updated}, _changed(c)


@command(suppression, "export")
@click.option("--account", required=True, metavar="NAME", help="Whose suppression list.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the CSV here (default: standard output).")
@click.option("--all", "include_expired", is_flag=True, help="Include expired entries.")
def suppression_export(ctx: Ctx, account: str, output: str | None, include_expired: bool):
    """Export the list as CSV (email,reason,expires_at,detail,created_at), as "relay suppression import" reads it back."""
    name, recs = svc.from_cli(ctx.store, ctx.settings, lambda s: s.export(account, include_expired=include_expired))
    # a bar on a terminal; nothing under --json or in a pipe
    text = "".join(progress(svc.csv_lines(recs), label="exporting", length=len(recs) + 1, as_json=ctx.as_json))
    if output:
        with open(output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return ({"success": True, "account": name, "exported": len(recs), "output": output},
                f"{len(recs)} entries written to {output}")
    return [svc.entry_dict(r) for r in recs], text.rstrip("\n")
