"""``relay quota``: sending limits per account, API key, alias and IP pool (:mod:`policies.quota_admin`).

The quota policy brings its own commands: they reach ``relay`` through the ``relay.commands``
entry-point group, so the core CLI knows no policy."""

from __future__ import annotations

from typing import Any

import click

from relay.cli.base import Ctx, command, table
from policies import quota_admin as svc


@click.group("quota")
def quota() -> None:
    """Sending quotas per account, API key, alias and IP pool: rate, daily cap, pool warm-up."""


def _set_text(data: dict[str, Any]) -> str:
    parts = [f"rate {data['rate'] or 'default'}", f"daily {data['daily'] if data['daily'] is not None else 'default'}"]
    if data["warmup"]:
        parts.append(f"warm-up {data['warmup']}" + (f" from {data['warmup_start']}" if data["warmup_start"] else ""))
    return f"quota for {data['kind'].replace('_', ' ')} {data['label']}: " + ", ".join(parts)


@command(quota, "set")
@click.option("--account", default=None, help="The account (required unless --pool alone: a pool-wide limit).")
@click.option("--key", "key_id", default=None, help="An API key id (rk_...) of the account.")
@click.option("--alias", default=None, help="A sender alias of the account.")
@click.option("--pool", "ip_pool", default=None,
              help="An IP pool: all its traffic, or with --account that account's share.")
@click.option("--rate", default=None, help="N/s, N/m or N/h (token bucket: bursts of N); 'unlimited'; "
                                           "'none' to fall back to the [policies.quota] default.")
@click.option("--daily", default=None, help="Recipients per UTC day; 'unlimited'; 'none'.")
@click.option("--warmup", default=None, help="Pools only: 'day:cap,...' (day 1 = the pool's first day), "
                                             "e.g. '1:50,2:100,3:500,5:2000'; 'none' to remove.")
@click.option("--warmup-start", default=None, help="Pools only: day 1 of the warm-up, YYYY-MM-DD (UTC). "
                                                   "Default: the day the pool was created. 'none' to reset.")
def quota_set(ctx: Ctx, account: str | None, key_id: str | None, alias: str | None, ip_pool: str | None,
              rate: str | None, daily: str | None, warmup: str | None, warmup_start: str | None):
    """Set limits on one target (an account unless --key, --alias or --pool says otherwise).

    One unit is one recipient. Over a limit, RCPT gets 451 4.7.1 / 452 4.5.3 (HTTP 429), never 5xx.
    Running gateways see a change within the policy's cache_ttl (5 s by default)."""
    data = svc.set_quota(ctx.store, account=account, key_id=key_id, alias=alias, ip_pool=ip_pool, rate=rate,
                         daily=daily, warmup=warmup, warmup_start=warmup_start)
    return data, _set_text(data)


@command(quota, "remove")
@click.option("--account", default=None, help="The account (required unless --pool alone: a pool-wide limit).")
@click.option("--key", "key_id", default=None, help="An API key id (rk_...) of the account.")
@click.option("--alias", default=None, help="A sender alias of the account.")
@click.option("--pool", "ip_pool", default=None, help="An IP pool: its pool-wide limits, or with --account that account's share.")
def quota_remove(ctx: Ctx, account: str | None, key_id: str | None, alias: str | None, ip_pool: str | None):
    """Remove a target's own limits (the [policies.quota] defaults, if any, apply again)."""
    t = svc.remove_quota(ctx.store, account=account, key_id=key_id, alias=alias, ip_pool=ip_pool)
    return {"success": True, "removed": t.target}, f"quota for {t.kind.replace('_', ' ')} {t.label} removed"


def _row(t: dict[str, Any]) -> list[Any]:
    return [t["label"], t["kind"].replace("_", " "), t["source"], t["rate"] or "-",
            "-" if t["available_now"] is None else t["available_now"], "-" if t["daily"] is None else t["daily"],
            t["used_today"], f"day {t['warmup_day']}: {t['warmup_cap']}" if t["warmup_day"] else "-"]


@command(quota, "show")
@click.option("--account", default=None, help="Only this account's targets (and its pools).")
@click.option("--pool", "ip_pool", default=None, help="Only this IP pool.")
def quota_show(ctx: Ctx, account: str | None, ip_pool: str | None):
    """Usage today and tokens available now, against the effective limits (stored or default)."""
    data = svc.report(ctx.store, ctx.settings, account=account, ip_pool=ip_pool)
    text = table([_row(t) for t in data["targets"]],
                 ["TARGET", "KIND", "FROM", "RATE", "AVAILABLE", "DAILY", "USED TODAY", "WARM-UP"])
    if not data["enforced"]:
        text += "\n(note: the quota policy is not in [policies] enabled: these limits are not enforced)"
    return data, text
