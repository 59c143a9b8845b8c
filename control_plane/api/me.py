"""`GET /v1/me`: who the bearer token says the caller is, and the pgward roles that gives."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from control_plane.api.deps import CurrentIdentity, SettingsDep, roles_of
from control_plane.identity.credentials import Identity

router = APIRouter(prefix="/v1", tags=["identity"])


class Person(BaseModel):
    subject: str
    username: str
    groups: list[str]


class Me(BaseModel):
    subject: str
    username: str
    groups: list[str]
    issuer: str
    kind: str
    credential: str
    roles: list[str]
    acting_for: Person | None


def _person(identity: Identity | None) -> Person | None:
    if identity is None:
        return None
    return Person(subject=identity.subject, username=identity.username, groups=list(identity.groups))


@router.get("/me")
async def me(identity: CurrentIdentity, settings: SettingsDep) -> Me:
    """The verified identity behind the bearer token (never the token itself)."""
    return Me(
        subject=identity.subject,
        username=identity.username,
        groups=list(identity.groups),
        issuer=identity.issuer,
        kind=identity.kind,
        credential=identity.credential,
        roles=roles_of(identity, settings),
        acting_for=_person(identity.acting_for),
    )
