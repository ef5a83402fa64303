"""``relay domain``: sending domains and their DKIM keys."""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command, table


@click.group("domain")
def domain() -> None:
    """Sending domains and their DKIM keys."""


def records_text(records) -> str:
    return "\n".join(f"{r.type}  {r.name}\n    {r.value}\n    ({r.purpose})" for r in records)


@command(domain, "add")
@click.argument("name")
@click.option("--account", required=True, metavar="NAME", help="The account that sends from the domain.")
def domain_add(ctx: Ctx, name: str, account: str):
    """Add the sending domain NAME with new DKIM keys (RSA-2048 and Ed25519); prints the DNS records to publish."""
    rec, records = ctx.admin.add_domain(name, account)
    return ({"domain": rec, "records": records},
            (f"domain {rec.name} added for {account}. Publish these DNS records, then run "
             f"`relay domain verify {rec.name}`:\n\n{records_text(records)}"))


ACCOUNT_HELP = ("The account whose claim on the domain is meant (needed when several accounts claim it "
                "and none verified it; default: the verified claim).")


@command(domain, "records")
@click.argument("name")
@click.option("--account", default=None, help=ACCOUNT_HELP)
def domain_records(ctx: Ctx, name: str, account: str | None):
    """The DNS records of domain NAME again: DKIM TXT per selector, verification TXT, SPF hint."""
    records = ctx.admin.dns_records(ctx.admin.claim(name, account))
    return records, records_text(records)


@command(domain, "verify")
@click.argument("name")
@click.option("--account", default=None, help=ACCOUNT_HELP)
@click.option("--trust", is_flag=True, help="Mark verified without a DNS check (the sysadmin vouches).")
def domain_verify(ctx: Ctx, name: str, account: str | None, trust: bool):
    """Check the verification TXT record (and a pending DKIM rotation's records). The first claim
    verified owns the domain: another account's claim is then refused."""
    rec = ctx.admin.verify_domain_and_keys(name, trust=trust, account=account)
    return rec, f"domain {rec.name} verified"


@command(domain, "list")
@click.option("--account", default=None, metavar="NAME", help="Only this account's domains.")
def domain_list(ctx: Ctx, account: str | None):
    """Sending domains: id, verified or not, DKIM selectors."""
    recs = ctx.store.directory.list_domains(account)
    owners = {a.id: a.name for a in ctx.store.directory.list_accounts()}
    return recs, table([[r.name, r.id, owners.get(r.account_id, r.account_id), "verified" if r.verified else "unverified",
                         " ".join(k.selector for k in r.keys)] for r in recs],
                       ["DOMAIN", "ID", "ACCOUNT", "STATE", "SELECTORS"])


@command(domain, "remove")
@click.argument("name")
@click.option("--account", default=None, help=ACCOUNT_HELP)
def domain_remove(ctx: Ctx, name: str, account: str | None):
    """Remove the sending domain NAME (the account's claim) and its DKIM keys."""
    ctx.admin.remove_domain(name, account)
    return {"success": True, "removed": name}, f"domain {name} removed"
