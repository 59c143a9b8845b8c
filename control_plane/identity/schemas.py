"""Request and response bodies of the service-identities API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from control_plane.connections.schemas import ResourceName

GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")]


class ServiceIdentityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ResourceName
    groups: list[GroupName] = Field(default_factory=list, max_length=100)
    description: str = Field(default="", max_length=2000)


class ApiKeyInfo(BaseModel):
    key_id: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ServiceIdentityOut(BaseModel):
    id: uuid.UUID
    name: str
    groups: list[str]
    description: str
    disabled: bool
    created_at: datetime
    keys: list[ApiKeyInfo]


class ServiceIdentityCreated(BaseModel):
    """The only response that carries the API key; it is not stored and cannot be shown again."""

    name: str
    groups: list[str]
    key_id: str
    api_key: str


class ServiceIdentityList(BaseModel):
    items: list[ServiceIdentityOut]
    next_cursor: str | None
