"""`/v1/service-identities`: non-human callers; an API key is shown once, at creation or rotation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane.api.deps import AdminIdentity, IdentityServiceDep
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.connections.schemas import ResourceName
from control_plane.identity.api_keys import GeneratedKey
from control_plane.identity.schemas import (
    ApiKeyInfo,
    ServiceIdentityCreate,
    ServiceIdentityCreated,
    ServiceIdentityList,
    ServiceIdentityOut,
)
from control_plane.store.models import ServiceIdentity

router = APIRouter(prefix="/v1/service-identities", tags=["service-identities"], responses=PROBLEM_RESPONSES)


def _out(identity: ServiceIdentity) -> ServiceIdentityOut:
    return ServiceIdentityOut(
        id=identity.id,
        name=identity.name,
        groups=list(identity.groups),
        description=identity.description,
        disabled=identity.disabled,
        created_at=identity.created_at,
        keys=[
            ApiKeyInfo(
                key_id=key.key_id,
                created_at=key.created_at,
                last_used_at=key.last_used_at,
                revoked_at=key.revoked_at,
            )
            for key in sorted(identity.api_keys, key=lambda key: key.created_at)
        ],
    )


def _created(identity: ServiceIdentity, key: GeneratedKey) -> ServiceIdentityCreated:
    return ServiceIdentityCreated(
        name=identity.name, groups=list(identity.groups), key_id=key.key_id, api_key=key.token
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_service_identity(
    body: ServiceIdentityCreate, _: AdminIdentity, service: IdentityServiceDep
) -> ServiceIdentityCreated:
    """Create the identity and its first API key; the key is in this response only."""
    identity, key = await service.create(body.name, body.groups, body.description)
    return _created(identity, key)


@router.get("")
async def list_service_identities(
    _: AdminIdentity,
    service: IdentityServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> ServiceIdentityList:
    page = await service.list_page(limit, cursor)
    return ServiceIdentityList(items=[_out(i) for i in page.items], next_cursor=page.next_cursor)


@router.get("/{name}")
async def get_service_identity(
    name: ResourceName, _: AdminIdentity, service: IdentityServiceDep
) -> ServiceIdentityOut:
    return _out(await service.get(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_service_identity(name: ResourceName, _: AdminIdentity, service: IdentityServiceDep) -> None:
    """Delete the identity; every key it had stops working immediately."""
    await service.delete(name)


@router.post("/{name}/keys", status_code=status.HTTP_201_CREATED)
async def rotate_service_identity_key(
    name: ResourceName, _: AdminIdentity, service: IdentityServiceDep
) -> ServiceIdentityCreated:
    """Revoke the identity's keys and issue a new one, shown in this response only."""
    identity, key = await service.rotate(name)
    return _created(identity, key)
