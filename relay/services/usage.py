"""``GET /api/v1/usage``: one account's counts today against its quotas and its pools' warm-up caps.

Synchronous (run in a store thread). The limits are the quota policy's own (stored with
``relay quota set`` or defaulted in ``[policies.quota]``), merged by :func:`policies.quota_rules.effective`
exactly as the policy merges them; ``enforced`` says whether the quota policy is enabled at all.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from relay.store import Store, utcnow
from relay.store.directory import AccountRec
from relay.store.tracking import Tracking


def account_usage(store: Store, settings: Any, account: AccountRec, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    today = now.astimezone(dt.timezone.utc).date()
    day_start = dt.datetime.combine(today, dt.time(), tzinfo=dt.timezone.utc)
    out: dict[str, Any] = {
        "day": today.isoformat(),
        "enforced": "quota" in settings.policies.enabled,
        "sent_today": Tracking(store.sessions, store.reads).sent_today(account.id, day_start),
        "limits": [],
    }
    try:
        from policies.quota import parse_options
        from policies.quota_rules import effective
        from policies.quota_store import QuotaStore
    except ImportError:  # the quota policy is not installed
        return out
    _, defaults = parse_options(settings.policies.options.get("quota", {}))
    qs = QuotaStore(store.sessions, store.reads)
    d = store.directory
    aliases = d.list_aliases(account.name)
    pools = sorted({a.ip_pool for a in aliases})
    cands = [("account", f"account:{account.id}", account.name, None)]
    cands += [("key", f"key:{k.id}", k.id, None) for k in d.list_api_keys(account.name) if not k.revoked]
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
    for target, (kind, label, e) in effs.items():
        u = usage[target]
        available = None if e.rate is None else (e.rate.count if u.tokens is None else int(u.tokens))
        out["limits"].append({
            "target": target, "kind": kind, "label": label, "rate": str(e.rate) if e.rate else None,
            "available_now": available, "daily": e.daily, "used_today": u.used_today,
            "remaining_today": None if e.daily is None else max(0, e.daily - u.used_today),
            "warmup_day": e.warmup_day, "warmup_cap": e.warmup_cap})
    return out
