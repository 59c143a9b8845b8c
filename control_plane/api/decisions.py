"""`/v1/decisions/explain`: what pgward would decide for an identity, a connection and some SQL, and why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from control_plane.api.deps import AdminIdentity, SettingsDep, get_sessionmaker
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.policy.engine import PolicyEngine
from control_plane.policy.explain import ExplainRequest, ExplainResponse, explain
from control_plane.policy.runtime import load_policy_set
from control_plane.store.db import SessionMaker

router = APIRouter(prefix="/v1/decisions", tags=["decisions"], responses=PROBLEM_RESPONSES)


@router.post("/explain")
async def explain_decision(
    body: ExplainRequest,
    _: AdminIdentity,
    settings: SettingsDep,
    sessionmaker: Annotated[SessionMaker, Depends(get_sessionmaker)],
) -> ExplainResponse:
    """Decide `sql` for `identity` on `connection` with the stored policies, without running anything."""
    engine = PolicyEngine(await load_policy_set(sessionmaker), public_url=settings.public_url)
    return explain(engine, body)
