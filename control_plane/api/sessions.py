"""`/v1/sessions`: session recordings, for admins and auditors. Reading a recording is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from control_plane.api.audit import AuditReader
from control_plane.api.deps import SettingsDep
from control_plane.api.problems import PROBLEM_RESPONSES, BadRequest, NotFound
from control_plane.audit.writer import record_access
from control_plane.recordings import store

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=PROBLEM_RESPONSES)


class SessionList(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


@router.get("")
async def list_sessions(
    reader: AuditReader,
    settings: SettingsDep,
    identity: Annotated[str | None, Query(description="subject or user name")] = None,
    connection: str | None = None,
    since: Annotated[datetime | None, Query(description="started at or after")] = None,
    until: Annotated[datetime | None, Query(description="started before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> SessionList:
    """Recorded sessions, newest first: identity, connection, start and end, size."""
    try:
        records, next_cursor = store.search(
            settings.recordings_path,
            identity=identity,
            connection=connection,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    except store.InvalidCursor as exc:
        raise BadRequest(str(exc)) from None
    return SessionList(items=[r.as_json() for r in records], next_cursor=next_cursor)


@router.get("/{session_id}")
async def get_session(session_id: str, reader: AuditReader, settings: SettingsDep) -> dict[str, Any]:
    record = store.get(settings.recordings_path, session_id)
    if record is None:
        raise NotFound(f"no recording of session {session_id!r}")
    return {**record.as_json(), "metadata": record.meta, "trailer": record.trailer}


@router.get("/{session_id}/recording", response_class=FileResponse)
async def download_recording(session_id: str, reader: AuditReader, settings: SettingsDep) -> FileResponse:
    """The recording file (format: docs/recording.md). The read is recorded in the audit log first."""
    path = store.path_of(settings.recordings_path, session_id)
    if path is None:
        raise NotFound(f"no recording of session {session_id!r}")
    await record_access(
        "recording.read", actor=reader, resource=session_id, detail={"size": path.stat().st_size}
    )
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)
