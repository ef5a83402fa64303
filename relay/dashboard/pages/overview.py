"""``/``: the queue by state, delivered / deferred / bounced per hour, and the health of the IP pools
the account sends through."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from relay.api.deps import DirectoryDep, MessagesDep, Services, UpstreamsDep
from relay.dashboard.auth import Current
from relay.dashboard.charts import grouped
from relay.dashboard.web import page
from relay.services.upstreams import pool_health
from relay.vocab import PENDING

router = APIRouter(include_in_schema=False)
SERIES = ("delivered", "deferred", "bounced")


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, viewer: Current, svc: Services, log: MessagesDep, directory: DirectoryDep,
                   upstreams: UpstreamsDep) -> HTMLResponse:
    ident = viewer.ident
    view = await log.overview(ident.account_id)
    chart = grouped("Delivered, deferred and bounced per hour (UTC), last 24 hours",
                    [h.strftime("%H:00") for h in view.hours], SERIES, view.per_hour, tick_every=3)
    pools = {a.ip_pool for a in await directory.aliases(ident)}
    pools |= {u.ip_pool for u in await upstreams.upstreams(ident) if u.account_id == ident.account_id}
    totals = {s: sum(h.get(s, 0) for h in view.per_hour) for s in SERIES}
    return page(request, "overview.html", viewer, title="Overview", states=view.states, pending=PENDING,
                chart=chart, totals=totals, health=pool_health(svc.router, ident.account_id, pools))
