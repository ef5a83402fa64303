"""The quota policy's administration (``relay quota``, ``GET /api/v1/usage``'s limits): for the
sysadmin, which target a request names, what a limit given as text means, and usage today
against the effective limits (stored, or the ``[policies.quota]`` defaults).

The limits are the quota policy's own (:mod:`policies.quota_rules` merges them exactly as the
policy does); one unit is one recipient. Synchronous: the CLI calls it directly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from policies.options import Options
from policies.quota_rules import (
    Effective,
    KeyedError,
    LimitSpec,
    parse_defaults,
    KINDS,
    RATE_EXPECTED,
    UNLIMITED,
    WARMUP_EXPECTED,
    effective,
    format_warmup,
    parse_rate,
    parse_warmup,
)
from policies.quota_store import QuotaStore
from relay.store import Store, utcnow
from relay.store.directory import AccountRec, Directory
from relay.vocab import Invalid, NotFound

POOL_KINDS = ("pool", "account_pool")

KEYS = ("cache_ttl", "pool_warmup") + tuple(f"{k}_{w}" for k in ("account", "key", "alias", "pool")
                                            for w in ("rate", "daily"))


def parse_options(options: dict[str, Any]) -> tuple[float, dict[str, LimitSpec]]:
    """(cache_ttl, defaults per kind) from ``[policies.quota]``; ConfigError names the key."""
    o = Options("quota", options, KEYS)
    ttl = o.number("cache_ttl", 5.0)
    try:
        defaults = parse_defaults(o.raw)
    except KeyedError as exc:
        raise o.error(exc.key, exc.value, exc.expected) from None
    return ttl, defaults


@dataclass(frozen=True)
class Target:
    """One thing a limit applies to: ``target`` is its key in the quota tables."""

    kind: str
    target: str
    account_id: str | None
    subject: str
    ip_pool: str | None
    label: str


def _quotas(store: Store) -> QuotaStore:
    return QuotaStore(store.sessions, store.reads)


def _check_ip_pool(store: Store, ip_pool: str, hint: str = "") -> None:
    if ip_pool not in dict(store.directory.list_ip_pools()):
        raise NotFound(f"no IP pool {ip_pool!r}{hint}")


def resolve_target(store: Store, *, account: str | None = None, key_id: str | None = None, alias: str | None = None,
                   ip_pool: str | None = None) -> Target:
    """The account unless a key, an alias or an IP pool is named (at most one); an IP pool alone is the
    pool-wide limit, with an account that account's share of it."""
    if sum(x is not None for x in (key_id, alias, ip_pool)) > 1:
        raise Invalid("give at most one of --key, --alias, --pool", field="target")
    d = store.directory
    acc = d.get_account(account) if account else None
    if ip_pool is not None:
        _check_ip_pool(store, ip_pool, " (pools appear with `relay upstream add --ip-pool` or `relay alias add`)")
        if acc is None:
            return Target("pool", f"pool:{ip_pool}", None, ip_pool, ip_pool, ip_pool)
        return Target("account_pool", f"account_pool:{acc.id}/{ip_pool}", acc.id, ip_pool, ip_pool,
                      f"{acc.name} in {ip_pool}")
    if acc is None:
        raise Invalid("--account is required (only a pool-wide limit, --pool alone, goes without it)",
                      field="account")
    if key_id is not None:
        key = d.find_api_key(key_id.strip())
        if key is None or key.account_id != acc.id:
            raise NotFound(f"no API key {key_id!r} in account {acc.name}")
        return Target("key", f"key:{key.id}", acc.id, key.id, None, key.id)
    if alias is not None:
        rec = d.find_alias(alias.strip().lower())
        if rec is None or rec.account_id != acc.id:
            raise NotFound(f"no alias {alias!r} in account {acc.name}")
        return Target("alias", f"alias:{rec.id}", acc.id, rec.email, rec.ip_pool, rec.email)
    return Target("account", f"account:{acc.id}", acc.id, acc.name, None, acc.name)


# -- limits given as text ---------------------------------------------------------------------------------
def limit_value(value: str, what: str) -> Any:
    """``rate`` or ``daily`` text -> stored value: "none" -> None (inherit), "unlimited" -> -1."""
    text = value.strip().lower()
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


def warmup_value(warmup: str) -> Any:
    if warmup.strip().lower() in ("none", "off", ""):
        return None
    try:
        return parse_warmup(warmup)
    except ValueError:
        raise Invalid(f"invalid --warmup {warmup!r}: {WARMUP_EXPECTED}", field="warmup") from None


def warmup_start_value(value: str) -> dt.date | None:
    if value.strip().lower() in ("none", ""):
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise Invalid(f"invalid --warmup-start {value!r}: expected YYYY-MM-DD", field="warmup_start") from None


def changes(target: Target, *, rate: str | None, daily: str | None, warmup: str | None,
            warmup_start: str | None) -> dict[str, Any]:
    """The options given (None: not given, keep) as stored values; warm-up applies to IP pools only."""
    out: dict[str, Any] = {}
    if rate is not None:
        out["rate"] = limit_value(rate, "rate")
    if daily is not None:
        out["daily"] = limit_value(daily, "daily")
    if (warmup is not None or warmup_start is not None) and target.kind not in POOL_KINDS:
        raise Invalid("--warmup and --warmup-start apply to IP pools only (--pool)", field="warmup")
    if warmup is not None:
        out["warmup"] = warmup_value(warmup)
    if warmup_start is not None:
        out["warmup_start"] = warmup_start_value(warmup_start)
    return out


# -- operations -----------------------------------------------------------------------------------------
def set_quota(store: Store, *, account: str | None = None, key_id: str | None = None, alias: str | None = None,
              ip_pool: str | None = None, rate: str | None = None, daily: str | None = None,
              warmup: str | None = None, warmup_start: str | None = None) -> dict[str, Any]:
    """Set limits on one target; returns the target's limits now (``None``: the default applies)."""
    if rate is None and daily is None and warmup is None and warmup_start is None:
        raise Invalid("nothing to set: give --rate, --daily, --warmup or --warmup-start", field="rate")
    t = resolve_target(store, account=account, key_id=key_id, alias=alias, ip_pool=ip_pool)
    values = changes(t, rate=rate, daily=daily, warmup=warmup, warmup_start=warmup_start)
    rec = _quotas(store).set_limit(target=t.target, kind=t.kind, account_id=t.account_id, subject=t.subject,
                                   ip_pool=t.ip_pool, **values)
    spec = rec.spec
    return {"success": True, "target": rec.target, "kind": rec.kind, "label": t.label,
            "rate": None if spec.rate is None else "unlimited" if spec.rate == UNLIMITED else str(spec.rate),
            "daily": "unlimited" if spec.daily == UNLIMITED else spec.daily,
            "warmup": format_warmup(spec.warmup) or None,
            "warmup_start": spec.warmup_start.isoformat() if spec.warmup_start else None}


def remove_quota(store: Store, *, account: str | None = None, key_id: str | None = None, alias: str | None = None,
                 ip_pool: str | None = None) -> Target:
    """Remove a target's own limits (the defaults, if any, apply again)."""
    t = resolve_target(store, account=account, key_id=key_id, alias=alias, ip_pool=ip_pool)
    _quotas(store).remove_limit(t.target)
    return t


# -- usage against the limits -------------------------------------------------------------------------------
class _Candidates:
    """The targets worth showing, by target key: stored limits, plus what the defaults cover."""

    def __init__(self, store: Store) -> None:
        self.directory = store.directory
        self.out: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}

    def account_name(self, account_id: str | None) -> str:
        if account_id and account_id not in self._names:
            try:
                self._names[account_id] = self.directory.get_account_by_id(account_id).name
            except NotFound:
                self._names[account_id] = account_id
        return self._names.get(account_id or "", "")

    def add(self, kind: str, target: str, label: str, ip_pool: str | None, row: Any = None) -> None:
        self.out.setdefault(target, {"kind": kind, "target": target, "label": label, "ip_pool": ip_pool, "row": row})
        if row is not None:
            self.out[target]["row"] = row

    def stored(self, rows: list[Any]) -> None:
        for row in rows:
            label = {"account": self.account_name(row.account_id),
                     "account_pool": f"{self.account_name(row.account_id)} in {row.ip_pool}"}.get(row.kind, row.subject)
            self.add(row.kind, row.target, label, row.ip_pool, row)

    def of_account(self, acc: Any, defaults: dict[str, Any], pool_rows: list[Any]) -> None:
        aliases = self.directory.list_aliases(acc.name)
        ip_pools = sorted({a.ip_pool for a in aliases})
        for row in pool_rows:
            if row.kind == "pool" and row.ip_pool in ip_pools:
                self.add("pool", row.target, row.subject, row.ip_pool, row)
        self.add("account", f"account:{acc.id}", acc.name, None)
        if "key" in defaults:
            for k in self.directory.list_api_keys(acc.name):
                if not k.revoked:
                    self.add("key", f"key:{k.id}", k.id, None)
        if "alias" in defaults:
            for a in aliases:
                self.add("alias", f"alias:{a.id}", a.email, a.ip_pool)
        if "pool" in defaults:
            for p in ip_pools:
                self.add("pool", f"pool:{p}", p, p)


def candidates(store: Store, defaults: dict[str, Any], account: str | None, ip_pool: str | None) -> list[dict[str, Any]]:
    """The targets ``quota show`` reports: stored limits, plus what the defaults cover for the account."""
    acc = store.directory.get_account(account) if account else None
    if ip_pool is not None:
        _check_ip_pool(store, ip_pool)
    qs = _quotas(store)
    c = _Candidates(store)
    c.stored(qs.list_limits(acc.id if acc else None))
    if acc is not None:
        c.of_account(acc, defaults, qs.list_limits(None))
    if ip_pool is not None:
        if acc is None:
            c.add("pool", f"pool:{ip_pool}", ip_pool, ip_pool)
        return [x for x in c.out.values() if x["ip_pool"] == ip_pool and x["kind"] in POOL_KINDS]
    return sorted(c.out.values(), key=lambda x: (KINDS.index(x["kind"]), x["label"]))


def report(store: Store, settings: Any, *, account: str | None = None, ip_pool: str | None = None,
           now: dt.datetime | None = None) -> dict[str, Any]:
    """Usage today and tokens available now against the effective limits:
    ``{enforced, day, targets: [{target, kind, label, source, rate, available_now, daily, used_today,
    remaining_today, warmup_day, warmup_cap}]}``."""
    _, defaults = parse_options(settings.policies.options.get("quota", {}))
    qs = _quotas(store)
    now = now or utcnow()
    today = now.date()
    cands = candidates(store, defaults, account, ip_pool)
    starts = {p: qs.pool_started(p) for p in {c["ip_pool"] for c in cands if c["ip_pool"]}}
    effs = {c["target"]: effective(c["kind"], c["target"], c["row"].spec if c["row"] else None,
                                   defaults.get(c["kind"]), today=today, pool_start=starts.get(c["ip_pool"]))
            for c in cands}
    usage = qs.usage(list(effs), today, now, {t: e.rate for t, e in effs.items() if e.rate})
    targets = []
    for c in cands:
        e, u = effs[c["target"]], usage[c["target"]]
        targets.append({"target": c["target"], "kind": c["kind"], "label": c["label"],
                        "source": "set" if c["row"] is not None else "default",
                        "rate": str(e.rate) if e.rate else None,
                        "available_now": None if e.rate is None else (e.rate.count if u.tokens is None else int(u.tokens)),
                        "daily": e.daily, "used_today": u.used_today,
                        "remaining_today": None if e.daily is None else max(0, e.daily - u.used_today),
                        **warmup_fields(e)})
    return {"enforced": "quota" in settings.policies.enabled, "day": today.isoformat(), "targets": targets}


def warmup_fields(e: Effective) -> dict[str, Any]:
    """Where a warming pool stands today, and its whole schedule ([day, cap] pairs)."""
    return {"warmup_day": e.warmup_day, "warmup_cap": e.warmup_cap,
            "warmup_schedule": [list(x) for x in e.warmup_schedule] if e.warmup_schedule else None}


def account_limits(directory: Directory, qs: QuotaStore, defaults: dict[str, Any], account: AccountRec,
                   now: dt.datetime, own_pools: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One account's limited targets today (``GET /api/v1/usage``): its own, its keys', its aliases',
    and its IP pools' (warm-up included), each with what is used and left. A pool the account shares
    (not in ``own_pools``) shows its limits only: what the other accounts sent there is theirs."""
    today = now.astimezone(dt.timezone.utc).date()
    aliases = directory.list_aliases(account.name)
    pools = sorted({a.ip_pool for a in aliases})
    cands = [("account", f"account:{account.id}", account.name, None)]
    cands += [("key", f"key:{k.id}", k.id, None) for k in directory.list_api_keys(account.name) if not k.revoked]
    cands += [("alias", f"alias:{a.id}", a.email, a.ip_pool) for a in aliases]
    cands += [("pool", f"pool:{p}", p, p) for p in pools]
    cands += [("account_pool", f"account_pool:{account.id}/{p}", f"{account.name} in {p}", p) for p in pools]
    rows = qs.limits([c[1] for c in cands])
    starts = {p: qs.pool_started(p) for p in pools}
    effs = {}
    for kind, target, label, pool in cands:
        row = rows.get(target)
        e = effective(kind, target, row.spec if row else None, defaults.get(kind), today=today,
                      pool_start=starts.get(pool) if pool else None)
        if e.limited:
            effs[target] = (kind, label, e)
    usage = qs.usage(list(effs), today, now, {t: e.rate for t, (_, _, e) in effs.items() if e.rate})
    out = []
    for target, (kind, label, e) in effs.items():
        u = usage[target]
        available = None if e.rate is None else (e.rate.count if u.tokens is None else int(u.tokens))
        shared = kind == "pool" and label not in own_pools
        out.append({
            "target": target, "kind": kind, "label": label, "rate": str(e.rate) if e.rate else None,
            "available_now": None if shared else available, "daily": e.daily,
            "used_today": None if shared else u.used_today,
            "remaining_today": None if e.daily is None or shared else max(0, e.daily - u.used_today),
            **warmup_fields(e), "shared": shared})
    return out
