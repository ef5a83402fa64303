"""``/usage``: today's sends against the account's quotas, and its IP pools' warm-up progress as a chart."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from relay.api.deps import Services
from relay.dashboard.auth import Current
from relay.dashboard.charts import grouped
from relay.dashboard.web import page
from relay.services.usage import usage_today

router = APIRouter(include_in_schema=False)


def _applies(schedule: list[list[int]], day: int) -> int:
    """The listed day whose cap applies on ``day`` (the last one at or before it)."""
    return max((d for d, _ in schedule if d <= day), default=schedule[0][0])


def warmup_charts(limits: list[dict[str, Any]]) -> list[Any]:
    """One chart per warming IP pool: the cap of each day of its schedule, today's marked by what
    was sent today (a pool shared with other accounts: its caps only)."""
    charts = []
    for x in limits:
        schedule, day = x.get("warmup_schedule"), x.get("warmup_day")
        if not schedule or day is None:
            continue
        today = _applies(schedule, day)
        sent = x.get("used_today") or 0
        values = [{"cap": cap, **({"sent": sent} if d == today else {})} for d, cap in schedule]
        shared = ", shared" if x.get("shared") else ""
        label = f"{x['label']}{shared}: day {day} of the warm-up (last listed day {schedule[-1][0]})"
        charts.append(grouped(label, [f"day {d}" for d, _ in schedule], ("cap", "sent"), values))
    return charts


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request, viewer: Current, svc: Services) -> HTMLResponse:
    report = await usage_today(svc.runner, svc.store, svc.pipeline.policies, viewer.ident.account_id)
    return page(request, "usage.html", viewer, title="Usage", report=report, charts=warmup_charts(report["limits"]))
