"""`/v1/connections`: registered target databases; passwords are write-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from control_plane.api.deps import AdminIdentity, ConnectionServiceDep
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.connections.schemas import (
    ConnectionCreate,
    ConnectionList,
    ConnectionOut,
    ConnectionSpec,
    ResourceName,
)
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
