"""``GET /api/v1/usage``: today's sends against the account's quotas. Any valid key of the account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from relay.api.common import PREFIX, errors
from relay.api.deps import AnyKey, Services
from relay.services.usage import usage_today

router = APIRouter(prefix=PREFIX, tags=["usage"])


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    success: bool
    day: str
    enforced: bool
    sent_today: dict[str, int]
    limits: list[dict[str, Any]]


@router.get("/usage", response_model=Usage, responses=errors())
async def usage(ident: AnyKey, svc: Services) -> dict[str, Any]:
    """Today's sends against the account's quotas and its pools' warm-up caps."""
    return {"success": True, **await usage_today(svc.runner, svc.store, svc.pipeline.policies, ident.account_id)}
