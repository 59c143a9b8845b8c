"""`/v1/audit/events`: the audit log, for admins and auditors. Every read is itself audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from control_plane.api.deps import CurrentIdentity, SessionDep, SettingsDep, role_groups, roles_of
from control_plane.api.problems import PROBLEM_RESPONSES, Forbidden
from control_plane.audit import search as store
from control_plane.audit.writer import record_access
from control_plane.identity.credentials import Identity

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)


async def require_audit_reader(identity: CurrentIdentity, settings: SettingsDep) -> Identity:
    roles = roles_of(identity, settings)
    if "admin" not in roles and "auditor" not in roles:
        groups = [*role_groups(settings, "admin"), *role_groups(settings, "auditor")]
        raise Forbidden(
            f'"{identity.username}" may not read the audit log: it needs one of the groups '
            f"{', '.join(groups) or '(none configured)'}"
        )
    return identity


AuditReader = Annotated[Identity, Depends(require_audit_reader)]


class AuditEventList(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


@router.get("/events")
async def list_events(
    request: Request,
    reader: AuditReader,
    session: SessionDep,
    identity: Annotated[str | None, Query(description="subject or user name")] = None,
    connection: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decision: Annotated[str | None, Query(description="allow or deny")] = None,
    class_: Annotated[str | None, Query(alias="class", description="statement class")] = None,
    q: Annotated[str | None, Query(description="text in the statement")] = None,
    kind: Annotated[str | None, Query(description="statement, session_start, login_denied, …")] = None,
    session_id: Annotated[str | None, Query(alias="session", description="session UUID")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> AuditEventList:
    filters = store.Filters(identity, connection, since, until, decision, class_, q, kind, session_id)
    rows, next_cursor = await store.search(session, filters, limit=limit, cursor=cursor)
    await record_access(
        "audit.search",
        actor=reader,
        resource="audit/events",
        detail={"filters": filters.describe(), "returned": len(rows)},
        settings=request.app.state.settings,
        engine=session.bind,  # type: ignore[arg-type]
    )
    return AuditEventList(items=[store.event_out(r) for r in rows], next_cursor=next_cursor)
