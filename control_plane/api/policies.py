"""`/v1/policies`: declarative policy documents, idempotent PUT with ETags, every version kept."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from pydantic import BaseModel

from control_plane.api.deps import AdminIdentity, SessionDep
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.connections.schemas import ResourceName
from control_plane.policy.documents import PolicyDocument
from control_plane.policy.runtime import policy_changed
from control_plane.policy.service import PolicyService
from control_plane.store.etags import etag
from control_plane.store.models import Policy

router = APIRouter(prefix="/v1/policies", tags=["policies"], responses=PROBLEM_RESPONSES)

IfMatch = Annotated[str | None, Header(description="ETag of the version this change is based on")]


def get_policy_service(session: SessionDep) -> PolicyService:
    return PolicyService(session)


PolicyServiceDep = Annotated[PolicyService, Depends(get_policy_service)]


class PolicyOut(BaseModel):
    name: str
    version: int
    document: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class PolicyList(BaseModel):
    items: list[PolicyOut]
    next_cursor: str | None


class PolicyVersionOut(BaseModel):
    version: int
    document: dict[str, Any] | None  # null: the policy was deleted at this version
    author: str
    created_at: datetime


class PolicyVersionList(BaseModel):
    items: list[PolicyVersionOut]
    next_cursor: str | None


def _out(policy: Policy) -> PolicyOut:
    return PolicyOut(
        name=policy.name,
        version=policy.version,
        document=policy.document,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


@router.get("")
async def list_policies(
    _: AdminIdentity,
    service: PolicyServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> PolicyList:
    page = await service.list_page(limit, cursor)
    return PolicyList(items=[_out(p) for p in page.items], next_cursor=page.next_cursor)


@router.get("/{name}")
async def get_policy(
    name: ResourceName, _: AdminIdentity, service: PolicyServiceDep, response: Response
) -> PolicyOut:
    policy = await service.get(name)
    response.headers["ETag"] = etag(policy)
    return _out(policy)


@router.put("/{name}", responses={201: {"model": PolicyOut, "description": "Created"}})
async def put_policy(
    name: ResourceName,
    body: PolicyDocument,
    admin: AdminIdentity,
    service: PolicyServiceDep,
    session: SessionDep,
    response: Response,
    if_match: IfMatch = None,
) -> PolicyOut:
    """Create or replace. Repeating the same document changes nothing (the version stays)."""
    policy, created, changed = await service.put(name, body, if_match, author=admin.subject)
    if changed:
        # Committed here, not by the dependency, so gateways in this process reload only after it.
        await session.commit()
        await policy_changed.notify()
    response.headers["ETag"] = etag(policy)
    if created:
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/v1/policies/{policy.name}"
    return _out(policy)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_policy(
    name: ResourceName,
    admin: AdminIdentity,
    service: PolicyServiceDep,
    session: SessionDep,
    if_match: IfMatch = None,
) -> None:
    await service.delete(name, if_match, author=admin.subject)
    await session.commit()
    await policy_changed.notify()


@router.get("/{name}/versions")
async def list_policy_versions(
    name: ResourceName, _: AdminIdentity, service: PolicyServiceDep
) -> PolicyVersionList:
    """Every version, newest first (a deletion is a version with a null document)."""
    rows = await service.versions(name)
    return PolicyVersionList(
        items=[
            PolicyVersionOut(version=v.version, document=v.document, author=v.author, created_at=v.created_at)
            for v in rows
        ],
        next_cursor=None,
    )
