"""`/v1/connections`: registered target databases; passwords are write-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.deps import AdminIdentity, ConnectionServiceDep, SessionDep, SettingsDep
from control_plane.api.problems import PROBLEM_RESPONSES, NotFound, UpstreamUnavailable
from control_plane.connections.propose import (
    DEFAULT_MIN_RATE,
    DEFAULT_SAMPLE,
    MAX_SAMPLE,
    ProposalUnavailable,
    propose_tags,
)
from control_plane.connections.schemas import (
    ConnectionCreate,
    ConnectionList,
    ConnectionOut,
    ConnectionSpec,
    ResourceName,
)
from control_plane.connections.service import get_connection_for_session
from control_plane.store.etags import etag
from control_plane.store.models import Connection

router = APIRouter(prefix="/v1/connections", tags=["connections"], responses=PROBLEM_RESPONSES)

IfMatch = Annotated[str | None, Header(description="ETag of the version this change is based on")]


def _out(connection: Connection) -> ConnectionOut:
    return ConnectionOut(
        id=connection.id,
        name=connection.name,
        host=connection.host,
        port=connection.port,
        database=connection.database,
        username=connection.username,
        tls_mode=connection.tls_mode,  # type: ignore[arg-type]  # the CHECK constraint guarantees it
        sslrootcert=connection.sslrootcert,
        has_password=connection.secret_ciphertext is not None,
        description=connection.description,
        created_at=connection.created_at,
        updated_at=connection.updated_at,
        version=connection.version,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_connection(
    body: ConnectionCreate, _: AdminIdentity, service: ConnectionServiceDep, response: Response
) -> ConnectionOut:
    connection = await service.create(body)
    response.headers["ETag"] = etag(connection)
    response.headers["Location"] = f"/v1/connections/{connection.name}"
    return _out(connection)


@router.get("")
async def list_connections(
    _: AdminIdentity,
    service: ConnectionServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> ConnectionList:
    page = await service.list_page(limit, cursor)
    return ConnectionList(items=[_out(c) for c in page.items], next_cursor=page.next_cursor)


@router.get("/{name}")
async def get_connection(
    name: ResourceName, _: AdminIdentity, service: ConnectionServiceDep, response: Response
) -> ConnectionOut:
    connection = await service.get(name)
    response.headers["ETag"] = etag(connection)
    return _out(connection)


@router.put("/{name}", responses={201: {"model": ConnectionOut, "description": "Created"}})
async def put_connection(
    name: ResourceName,
    body: ConnectionSpec,
    _: AdminIdentity,
    service: ConnectionServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> ConnectionOut:
    """Create or replace. Repeating the same body changes nothing (the version stays)."""
    connection, created = await service.put(name, body, if_match)
    response.headers["ETag"] = etag(connection)
    if created:
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/v1/connections/{connection.name}"
    return _out(connection)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_connection(
    name: ResourceName, _: AdminIdentity, service: ConnectionServiceDep, if_match: IfMatch = None
) -> None:
    await service.delete(name, if_match)


class TagProposalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample: int = Field(default=DEFAULT_SAMPLE, ge=1, le=MAX_SAMPLE, description="Rows read per table")
    min_rate: float = Field(
        default=DEFAULT_MIN_RATE, gt=0, le=1, description="Propose a tag at this share of matching values"
    )


class ColumnHits(BaseModel):
    column: str
    sampled: int
    hits: dict[str, int]
    rates: dict[str, float]
    tags: list[str]


class TagProposalOut(BaseModel):
    connection: str
    sample: int
    min_rate: float
    columns: list[ColumnHits] = Field(description="Every sampled column where a detector matched")
    skipped: list[str] = Field(description="Tables that could not be read, with the reason")
    yaml: str = Field(description="column_tags to paste into a policy, with hit rates")


@router.post("/{name}/tag-proposals", responses={502: {"description": "The target could not be sampled"}})
async def propose_connection_tags(
    name: ResourceName,
    _: AdminIdentity,
    session: SessionDep,
    settings: SettingsDep,
    body: TagProposalRequest | None = None,
) -> TagProposalOut:
    """Sample the connection's text columns with the content detectors and propose column tags.
    Nothing is applied, and no sampled value is returned: only counts."""
    body = body or TagProposalRequest()
    target = await get_connection_for_session(session, name, settings=settings)
    if target is None:
        raise NotFound(f'no connection named "{name}"')
    try:
        proposal = await propose_tags(target, sample=body.sample, min_rate=body.min_rate)
    except ProposalUnavailable as exc:
        raise UpstreamUnavailable(f'cannot sample connection "{name}": {exc}') from exc
    return TagProposalOut.model_validate(proposal.as_dict())
