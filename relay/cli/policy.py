"""``relay suppression``, ``relay quota`` and ``relay route explain``: the policies' CLI.

Registered onto the ``relay`` group from :mod:`relay.cli.main` (which imports this module last).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
from types import SimpleNamespace
from typing import Any

import click

from policies.quota_rules import (KINDS, RATE_EXPECTED, UNLIMITED, WARMUP_EXPECTED, effective, format_warmup,
                                  parse_rate, parse_warmup)
from relay.cli.main import Ctx, _table, command, main
from relay.vocab import Invalid, NotFound
from relay.store import utcnow
from relay.store.suppressions import REASONS, NewSuppression, SuppressionRec, Suppressions

CSV_FIELDS = ["email", "reason", "expires_at", "detail", "created_at"]
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COLUMNS = {"address": "email", "email_address": "email", "expires": "expires_at"}  # CSV header synonyms


# -- helpers ------------------------------------------------------------------------------------------
def parse_expiry(value: str | None, now: dt.datetime, field: str = "expires") -> dt.datetime | None:
    """``30d``, ``12h``, ``90m``, ``2w``, or an ISO date/time (UTC unless it says otherwise)."""
    if value is None or not value.strip() or value.strip().lower() in ("never", "none"):
        return None
    text = value.strip().lower()
    m = _DURATION.match(text)
    if m:
        return now + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"invalid expiry {value!r}: expected a duration (30d, 12h, 90m, 2w) or an ISO date/time",
                      field=field) from None
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def _email(value: str, field: str = "email") -> str:
    from relay.services.admin import check_email

    return check_email(value.strip().strip("<>"), field)


def _suppressions(ctx: Ctx) -> Suppressions:
    return Suppressions(ctx.store.sessions, ctx.store.reads)


def _supp_dict(r: SuppressionRec) -> dict[str, Any]:
    return {"email": r.address, "reason": r.reason, "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "detail": r.detail, "created_at": r.created_at.isoformat()}


# -- suppression ----------------------------------------------------------------------------------------
@main.group("suppression")
def suppression() -> None:
    """Per-account suppression lists: addresses that are never sent to (RCPT gets 550 5.7.1)."""


@command(suppression, "add")
@click.argument("emails", nargs=-1, required=True)
@click.option("--account", required=True)
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True)
@click.option("--expires", default=None, help="When the entry lapses: a duration (30d, 12h, 90m, 2w) or an ISO "
                                              "date/time (UTC). Default: never.")
@click.option("--detail", default=None, help="A note kept with the entry.")
def suppression_add(ctx: Ctx, emails: tuple[str, ...], account: str, reason: str, expires: str | None,
                    detail: str | None):
    """Add addresses (or update their entries). New sessions see the change within seconds."""
    acc = ctx.store.directory.get_account(account)
    now = utcnow()
    addrs = [_email(e) for e in emails]
    expires_at = parse_expiry(expires, now)
    added, updated = _suppressions(ctx).add(acc.id, [NewSuppression(a, reason, detail, expires_at) for a in addrs], now)
    return ({"success": True, "account": acc.name, "added": added, "updated": updated, "emails": addrs},
            f"{added} added, {updated} updated on the suppression list of {acc.name}")


@command(suppression, "list")
@click.option("--account", required=True)
@click.option("--reason", type=click.Choice(REASONS), default=None)
@click.option("--all", "include_expired", is_flag=True, help="Include expired entries.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
def suppression_list(ctx: Ctx, account: str, reason: str | None, include_expired: bool, limit: int):
    acc = ctx.store.directory.get_account(account)
    recs = _suppressions(ctx).list(acc.id, reason=reason, include_expired=include_expired, limit=limit)
    return ([_supp_dict(r) for r in recs],
            _table([[r.address, r.reason, r.created_at.strftime("%Y-%m-%d %H:%M"),
                     r.expires_at.strftime("%Y-%m-%d %H:%M") if r.expires_at else "never", r.detail]
                    for r in recs], ["EMAIL", "REASON", "ADDED", "EXPIRES", "DETAIL"]))


@command(suppression, "remove")
@click.argument("emails", nargs=-1, required=True)
@click.option("--account", required=True)
def suppression_remove(ctx: Ctx, emails: tuple[str, ...], account: str):
    """Take addresses off the list: mail to them is accepted again."""
    acc = ctx.store.directory.get_account(account)
    addrs = [e.strip().strip("<>").lower() for e in emails]
    n = _suppressions(ctx).remove(acc.id, addrs)
    return ({"success": True, "account": acc.name, "removed": n, "emails": addrs},
            f"{n} removed from the suppression list of {acc.name}")


def read_csv(text: str, default_reason: str, now: dt.datetime) -> list[NewSuppression]:
    """``email[,reason[,expires_at[,detail]]]`` rows; a header row naming the columns is optional."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)
            and not r[0].lstrip().startswith("#")]
    columns = ["email", "reason", "expires_at", "detail"]
    if rows and rows[0][0].strip().lower() in ("email", "address", "email_address"):
        columns = [_COLUMNS.get(c.strip().lower(), c.strip().lower()) for c in rows[0]]
        rows = rows[1:]
    out, seen = [], set()
    for n, row in enumerate(rows, 1):
        rec = {columns[i]: v.strip() for i, v in enumerate(row) if i < len(columns)}
        where = f"row {n}"
        try:
            address = _email(rec.get("email", ""), field=where)
        except Invalid as exc:
            raise Invalid(f"{where}: {exc}", field=where) from None
        reason = rec.get("reason") or default_reason
        if reason not in REASONS:
            raise Invalid(f"{where}: invalid reason {reason!r} (expected one of {', '.join(REASONS)})", field=where)
        expires = parse_expiry(rec.get("expires_at") or None, now, field=where)
        if address in seen:
            continue
        seen.add(address)
        out.append(NewSuppression(address, reason, rec.get("detail") or None, expires))
    return out


@command(suppression, "import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--account", required=True)
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Reason for rows that give none.")
def suppression_import(ctx: Ctx, file: Any, account: str, reason: str):
    """Import a CSV file (``-`` for stdin): email[,reason[,expires_at[,detail]]], header row optional.

    All rows or none: a bad row stops the import and names the row."""
    acc = ctx.store.directory.get_account(account)
    now = utcnow()
    entries = read_csv(file.read(), reason, now)
    added, updated = _suppressions(ctx).add(acc.id, entries, now)
    return ({"success": True, "account": acc.name, "added": added, "updated": updated},
            f"{added} added, {updated} updated on the suppression list of {acc.name}")


@command(suppression, "export")
@click.option("--account", required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the CSV here (default: standard output).")
@click.option("--all", "include_expired", is_flag=True, help="Include expired entries.")
def suppression_export(ctx: Ctx, account: str, output: str | None, include_expired: bool):
    """CSV (email,reason,expires_at,detail,created_at), as ``import`` reads it back."""
    acc = ctx.store.directory.get_account(account)
    recs = _suppressions(ctx).list(acc.id, include_expired=include_expired)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    from relay.cli.progress import progress  # a bar on a terminal; nothing under --json or in a pipe

    for r in progress(recs, label="exporting", as_json=ctx.as_json):
        writer.writerow({k: v if v is not None else "" for k, v in _supp_dict(r).items()})
    if output:
        with open(output, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
        return ({"success": True, "account": acc.name, "exported": len(recs), "output": output},
                f"{len(recs)} entries written to {output}")
    return [_supp_dict(r) for r in recs], buf.getvalue().rstrip("\n")


# -- quota --------------------------------------------------------------------------------------------
@main.group("quota")
def quota() -> None:
    """Sending quotas per account, API key, alias and IP pool: rate, daily cap, pool warm-up."""


def _target(ctx: Ctx, account: str | None, key_id: str | None, alias: str | None, pool: str | None) -> dict[str, Any]:
    """Which target the options name: kind, target string, owner and a label."""
    if sum(x is not None for x in (key_id, alias, pool)) > 1:
        raise Invalid("give at most one of --key, --alias, --pool", field="target")
    d = ctx.store.directory
    acc = d.get_account(account) if account else None
    if pool is not None:
        if pool not in dict(d.list_pools()):
            raise NotFound(f"no IP pool {pool!r} (pools appear with `relay pool add --ip-pool` or `relay alias add`)")
        if acc is None:
            return dict(kind="pool", target=f"pool:{pool}", account_id=None, subject=pool, ip_pool=pool, label=pool)
        return dict(kind="account_pool", target=f"account_pool:{acc.id}/{pool}", account_id=acc.id, subject=pool,
                    ip_pool=pool, label=f"{acc.name} in {pool}")
    if acc is None:
        raise Invalid("--account is required (only a pool-wide limit, --pool alone, goes without it)",
                      field="account")
    if key_id is not None:
        rec = d.find_api_key(key_id.strip())
        if rec is None or rec.account_id != acc.id:
            raise NotFound(f"no API key {key_id!r} in account {acc.name}")
        return dict(kind="key", target=f"key:{rec.id}", account_id=acc.id, subject=rec.id, ip_pool=None, label=rec.id)
    if alias is not None:
        rec = d.find_alias(alias.strip().lower())
        if rec is None or rec.account_id != acc.id:
            raise NotFound(f"no alias {alias!r} in account {acc.name}")
        return dict(kind="alias", target=f"alias:{rec.id}", account_id=acc.id, subject=rec.email, ip_pool=rec.ip_pool,
                    label=rec.email)
    return dict(kind="account", target=f"account:{acc.id}", account_id=acc.id, subject=acc.name, ip_pool=None,
                label=acc.name)


def _limit_value(value: str | None, what: str) -> Any:
    """CLI text -> stored value: None (option absent: keep), "none" -> None (inherit), "unlimited" -> -1."""
    text = value.strip().lower()  # type: ignore[union-attr]
    if text in ("none", "default", "inherit"):
        return None
    if text in ("unlimited", "off"):
        return UNLIMITED
    if what == "rate":
        try:
            return parse_rate(text)
        except ValueError:
            raise Invalid(f"invalid --rate {value!r}: {RATE_EXPECTED}, 'unlimited' or 'none'", field="rate") from None
    if not text.isdigit():
        raise Invalid(f"invalid --daily {value!r}: expected an integer >= 0, 'unlimited' or 'none'", field="daily")
    return int(text)


def _rate_text(rate: Any) -> str | None:
    if rate is None:
        return None
    return "unlimited" if rate == UNLIMITED else str(rate)


@command(quota, "set")
@click.option("--account", default=None, help="The account (required unless --pool alone: a pool-wide limit).")
@click.option("--key", "key_id", default=None, help="An API key id (rk_...) of the account.")
@click.option("--alias", default=None, help="A sender alias of the account.")
@click.option("--pool", default=None, help="An IP pool: all its traffic, or with --account that account's share.")
@click.option("--rate", default=None, help="N/s, N/m or N/h (token bucket: bursts of N); 'unlimited'; "
                                           "'none' to fall back to the [policies.quota] default.")
@click.option("--daily", default=None, help="Recipients per UTC day; 'unlimited'; 'none'.")
@click.option("--warmup", default=None, help="Pools only: 'day:cap,...' (day 1 = the pool's first day), "
                                             "e.g. '1:50,2:100,3:500,5:2000'; 'none' to remove.")
@click.option("--warmup-start", default=None, help="Pools only: day 1 of the warm-up, YYYY-MM-DD (UTC). "
                                                   "Default: the day the pool was created. 'none' to reset.")
def quota_set(ctx: Ctx, account: str | None, key_id: str | None, alias: str | None, pool: str | None,
              rate: str | None, daily: str | None, warmup: str | None, warmup_start: str | None):
    """Set limits on one target (an account unless --key, --alias or --pool says otherwise).

    One unit is one recipient. Over a limit, RCPT gets 451 4.7.1 / 452 4.5.3 (HTTP 429), never 5xx.
    Running gateways see a change within the policy's cache_ttl (5 s by default)."""
    from policies.quota_store import QuotaStore

    if rate is None and daily is None and warmup is None and warmup_start is None:
        raise Invalid("nothing to set: give --rate, --daily, --warmup or --warmup-start", field="rate")
    t = _target(ctx, account, key_id, alias, pool)
    changes: dict[str, Any] = {}
    if rate is not None:
        changes["rate"] = _limit_value(rate, "rate")
    if daily is not None:
        changes["daily"] = _limit_value(daily, "daily")
    if (warmup is not None or warmup_start is not None) and t["kind"] not in ("pool", "account_pool"):
        raise Invalid("--warmup and --warmup-start apply to IP pools only (--pool)", field="warmup")
    if warmup is not None:
        if warmup.strip().lower() in ("none", "off", ""):
            changes["warmup"] = None
        else:
            try:
                changes["warmup"] = parse_warmup(warmup)
            except ValueError:
                raise Invalid(f"invalid --warmup {warmup!r}: {WARMUP_EXPECTED}", field="warmup") from None
    if warmup_start is not None:
        if warmup_start.strip().lower() in ("none", ""):
            changes["warmup_start"] = None
        else:
            try:
                changes["warmup_start"] = dt.date.fromisoformat(warmup_start.strip())
            except ValueError:
                raise Invalid(f"invalid --warmup-start {warmup_start!r}: expected YYYY-MM-DD", field="warmup_start") \
                    from None
    rec = QuotaStore(ctx.store.sessions, ctx.store.reads).set_limit(
        target=t["target"], kind=t["kind"], account_id=t["account_id"], subject=t["subject"], ip_pool=t["ip_pool"],
        **changes)
    data = {"success": True, "target": rec.target, "kind": rec.kind, "label": t["label"],
            "rate": _rate_text(rec.spec.rate),
            "daily": "unlimited" if rec.spec.daily == UNLIMITED else rec.spec.daily,
            "warmup": format_warmup(rec.spec.warmup) or None,
            "warmup_start": rec.spec.warmup_start.isoformat() if rec.spec.warmup_start else None}
    parts = [f"rate {data['rate'] or 'default'}", f"daily {data['daily'] if data['daily'] is not None else 'default'}"]
    if data["warmup"]:
        parts.append(f"warm-up {data['warmup']}" + (f" from {data['warmup_start']}" if data["warmup_start"] else ""))
    return data, f"quota for {t['kind'].replace('_', ' ')} {t['label']}: " + ", ".join(parts)


@command(quota, "remove")
@click.option("--account", default=None)
@click.option("--key", "key_id", default=None)
@click.option("--alias", default=None)
@click.option("--pool", default=None)
def quota_remove(ctx: Ctx, account: str | None, key_id: str | None, alias: str | None, pool: str | None):
    """Remove a target's own limits (the [policies.quota] defaults, if any, apply again)."""
    from policies.quota_store import QuotaStore

    t = _target(ctx, account, key_id, alias, pool)
    QuotaStore(ctx.store.sessions, ctx.store.reads).remove_limit(t["target"])
    return {"success": True, "removed": t["target"]}, f"quota for {t['kind'].replace('_', ' ')} {t['label']} removed"


def _candidates(ctx: Ctx, qs: Any, defaults: dict[str, Any], account: str | None,
                pool: str | None) -> list[dict[str, Any]]:
    """The targets worth showing: stored limits, plus what the defaults cover for the account."""
    d = ctx.store.directory
    acc = d.get_account(account) if account else None
    if pool is not None and pool not in dict(d.list_pools()):
        raise NotFound(f"no IP pool {pool!r}")
    names: dict[str, str] = {}

    def account_name(account_id: str | None) -> str:
        if account_id and account_id not in names:
            try:
                names[account_id] = d.get_account_by_id(account_id).name
            except NotFound:
                names[account_id] = account_id
        return names.get(account_id or "", "")

    out: dict[str, dict[str, Any]] = {}

    def add(kind: str, target: str, label: str, ip_pool: str | None, row: Any = None) -> None:
        out.setdefault(target, dict(kind=kind, target=target, label=label, ip_pool=ip_pool, row=row))
        if row is not None:
            out[target]["row"] = row

    for row in qs.list_limits(acc.id if acc else None):
        label = {"account": account_name(row.account_id), "account_pool": f"{account_name(row.account_id)} in "
                 f"{row.ip_pool}"}.get(row.kind, row.subject)
        add(row.kind, row.target, label, row.ip_pool, row)
    if acc is not None:
        pools = sorted({a.ip_pool for a in d.list_aliases(acc.name)})
        for row in qs.list_limits(None):
            if row.kind == "pool" and row.ip_pool in pools:
                add("pool", row.target, row.subject, row.ip_pool, row)
        add("account", f"account:{acc.id}", acc.name, None)
        if "key" in defaults:
            for k in d.list_api_keys(acc.name):
                if not k.revoked:
                    add("key", f"key:{k.id}", k.id, None)
        if "alias" in defaults:
            for a in d.list_aliases(acc.name):
                add("alias", f"alias:{a.id}", a.email, a.ip_pool)
        if "pool" in defaults:
            for p in pools:
                add("pool", f"pool:{p}", p, p)
    if pool is not None:
        if acc is None:
            add("pool", f"pool:{pool}", pool, pool)
        return [c for c in out.values() if c["ip_pool"] == pool and c["kind"] in ("pool", "account_pool")]
    return sorted(out.values(), key=lambda c: (KINDS.index(c["kind"]), c["label"]))


@command(quota, "show")
@click.option("--account", default=None, help="Only this account's targets (and its pools).")
@click.option("--pool", default=None, help="Only this IP pool.")
def quota_show(ctx: Ctx, account: str | None, pool: str | None):
    """Usage today and tokens available now, against the effective limits (stored or default)."""
    from policies.quota import parse_options
    from policies.quota_store import QuotaStore

    _, defaults = parse_options(ctx.settings.policies.options.get("quota", {}))
    qs = QuotaStore(ctx.store.sessions, ctx.store.reads)
    now = utcnow()
    today = now.date()
    cands = _candidates(ctx, qs, defaults, account, pool)
    starts = {p: qs.pool_started(p) for p in {c["ip_pool"] for c in cands if c["ip_pool"]}}
    effs = {c["target"]: effective(c["kind"], c["target"], c["row"].spec if c["row"] else None,
                                   defaults.get(c["kind"]), today=today, pool_start=starts.get(c["ip_pool"]))
            for c in cands}
    usage = qs.usage(list(effs), today, now, {t: e.rate for t, e in effs.items() if e.rate})
    data, rows = [], []
    enabled = "quota" in ctx.settings.policies.enabled
    for c in cands:
        e, u = effs[c["target"]], usage[c["target"]]
        available = None if e.rate is None else (e.rate.count if u.tokens is None else int(u.tokens))
        item = {"target": c["target"], "kind": c["kind"], "label": c["label"],
                "source": "set" if c["row"] is not None else "default",
                "rate": str(e.rate) if e.rate else None, "available_now": available,
                "daily": e.daily, "used_today": u.used_today,
                "remaining_today": None if e.daily is None else max(0, e.daily - u.used_today),
                "warmup_day": e.warmup_day, "warmup_cap": e.warmup_cap}
        data.append(item)
        rows.append([c["label"], c["kind"].replace("_", " "), item["source"], item["rate"] or "-",
                     "-" if available is None else available, "-" if e.daily is None else e.daily, u.used_today,
                     f"day {e.warmup_day}: {e.warmup_cap}" if e.warmup_day else "-"])
    text = _table(rows, ["TARGET", "KIND", "FROM", "RATE", "AVAILABLE", "DAILY", "USED TODAY", "WARM-UP"])
    if not enabled:
        text += "\n(note: the quota policy is not in [policies] enabled: these limits are not enforced)"
    return {"enforced": enabled, "day": today.isoformat(), "targets": data}, text


# -- route explain --------------------------------------------------------------------------------------
@main.group("route")
def route() -> None:
    """How a submission would be routed and judged, without sending it."""


@command(route, "explain")
@click.option("--key", required=True, help="The API key (its id rk_xxxxxxxx, or the whole key).")
@click.option("--from", "sender", required=True, help="MAIL FROM / the From address.")
@click.option("--to", "recipients", multiple=True, required=True, help="A recipient (repeat for more).")
@click.option("--listener", type=click.Choice(["submission", "smtps", "relay", "api"]), default="submission",
              show_default=True, help="The front door to assume.")
def route_explain(ctx: Ctx, key: str, sender: str, recipients: tuple[str, ...], listener: str):
    """Alias, IP pool, upstreams in order, and each enabled policy's verdict for MAIL and each recipient."""
    from relay.services.explain import explain_route, render

    result = explain_route(ctx.store, ctx.settings, key=key, sender=sender.strip().strip("<>"),
                           recipients=[r.strip().strip("<>") for r in recipients], listener=listener)
    return result, render(result)

