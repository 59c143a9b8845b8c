"""FastAPI dependencies, as `Annotated` aliases endpoints declare."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api.problems import Forbidden, Unauthorized
from control_plane.approvals.directory import remember
from control_plane.config import Settings
from control_plane.connections.service import ConnectionService
from control_plane.identity.credentials import NOT_AUTHORISED, AuthError, CredentialVerifier, Identity
from control_plane.identity.service_identities import ServiceIdentityService
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker

_bearer = HTTPBearer(
    auto_error=False, description="An OIDC token from a configured issuer, or a pgward API key (pgw_…)"
)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessionmaker(request: Request) -> SessionMaker:
    sessionmaker: SessionMaker = request.app.state.sessionmaker
    return sessionmaker


def get_verifier(request: Request) -> CredentialVerifier:
    verifier: CredentialVerifier = request.app.state.verifier
    return verifier


def get_secret_box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.secret_box
    return box


async def get_session(
    sessionmaker: Annotated[SessionMaker, Depends(get_sessionmaker)],
) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed when the endpoint returns without raising."""
    async with sessionmaker() as session:
        yield session
        await session.commit()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": commit before the response is sent, so a failed commit is still an error response.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]


async def get_current_identity(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    verifier: Annotated[CredentialVerifier, Depends(get_verifier)],
    sessionmaker: Annotated[SessionMaker, Depends(get_sessionmaker)],
) -> Identity:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "an Authorization: Bearer <OIDC token or pgward API key> header is required", headers=challenge
        )
    try:
        identity = await verifier.verify(None, credentials.credentials)
    except AuthError as exc:
        if exc.sqlstate == NOT_AUTHORISED:
            raise Forbidden(exc.message) from None
        invalid = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        raise Unauthorized(exc.message, headers=invalid) from None
    # Chat decisions are taken in the name of identities pgward has seen (approvals/directory.py).
    await remember(sessionmaker, identity)
    return identity


CurrentIdentity = Annotated[Identity, Depends(get_current_identity)]


ROLES = ("admin", "approver", "auditor")


def role_groups(settings: Settings, role: str) -> list[str]:
    return {
        "admin": settings.admin_groups,
        "approver": settings.approver_groups,
        "auditor": settings.auditor_groups,
    }[role]


def roles_of(identity: Identity, settings: Settings) -> list[str]:
    """The pgward roles an identity holds through its groups (an agent's own groups, never its person's)."""
    groups = set(identity.groups)
    return [role for role in ROLES if groups & set(role_groups(settings, role))]


def _require(role: str, doing: str) -> Callable[[Identity, Settings], Awaitable[Identity]]:
    async def dependency(identity: CurrentIdentity, settings: SettingsDep) -> Identity:
        if role not in roles_of(identity, settings):
            raise Forbidden(
                f'"{identity.username}" may not {doing}: it needs one of the groups '
                f"{', '.join(role_groups(settings, role)) or '(none configured)'}"
            )
        return identity

    dependency.__name__ = f"require_{role}"
    return dependency


require_admin = _require("admin", "administer pgward")
require_approver = _require("approver", "approve or deny requests")
require_auditor = _require("auditor", "read the audit log")

AdminIdentity = Annotated[Identity, Depends(require_admin)]
ApproverIdentity = Annotated[Identity, Depends(require_approver)]
AuditorIdentity = Annotated[Identity, Depends(require_auditor)]


def get_connection_service(session: SessionDep, box: SecretBoxDep) -> ConnectionService:
    return ConnectionService(session, box)


def get_identity_service(session: SessionDep, box: SecretBoxDep) -> ServiceIdentityService:
    return ServiceIdentityService(session, box.pepper)


ConnectionServiceDep = Annotated[ConnectionService, Depends(get_connection_service)]
IdentityServiceDep = Annotated[ServiceIdentityService, Depends(get_identity_service)]
