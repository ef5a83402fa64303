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


def _label(limit: dict[str, Any]) -> str:
    return f"{limit['label']}{', shared' if limit.get('shared') else ''} (day {limit['warmup_day']})"


def warmup_chart(limits: list[dict[str, Any]]) -> Any:
    """Each warming IP pool: sent today against today's warm-up cap (None without any warm-up)."""
    warming = [x for x in limits if x.get("warmup_cap") is not None]
    if not warming:
        return None
    return grouped("Warm-up: sent today against today's cap", [_label(x) for x in warming],
                   ("sent", "cap"), [{"sent": x.get("used_today") or 0, "cap": x["warmup_cap"]} for x in warming])


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request, viewer: Current, svc: Services) -> HTMLResponse:
    report = await usage_today(svc.runner, svc.store, svc.pipeline.policies, viewer.ident.account_id)
    return page(request, "usage.html", viewer, title="Usage", report=report, chart=warmup_chart(report["limits"]))
