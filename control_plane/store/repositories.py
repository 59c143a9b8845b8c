"""All SQL of the metadata store; services call these and never build queries themselves."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from control_plane.store.models import (
    ApiKey,
    Connection,
    Policy,
    PolicyRevision,
    PolicyVersion,
    ServiceIdentity,
)


async def ping(session: AsyncSession) -> bool:
    """True when the store answers `SELECT 1`."""
    return (await session.execute(text("SELECT 1"))).scalar_one() == 1


class ConnectionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, name: str, *, for_update: bool = False) -> Connection | None:
        stmt = select(Connection).where(Connection.name == name)
        if for_update:
            # Serialises concurrent PUT/DELETE on one connection so If-Match checks cannot race.
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_after(self, after_name: str | None, limit: int) -> Sequence[Connection]:
        """Up to `limit` connections ordered by name, starting after `after_name` (keyset paging)."""
        stmt = select(Connection).order_by(Connection.name).limit(limit)
        if after_name is not None:
            stmt = stmt.where(Connection.name > after_name)
        return (await self.session.execute(stmt)).scalars().all()

    async def add(self, connection: Connection) -> Connection:
        self.session.add(connection)
        # Flush now so a duplicate name fails inside the service call, not at commit time.
        await self.session.flush()
        await self.session.refresh(connection)
        return connection

    async def save(self, connection: Connection) -> Connection:
        await self.session.flush()
        await self.session.refresh(connection)
        return connection

    async def delete(self, connection: Connection) -> None:
        await self.session.delete(connection)
        await self.session.flush()


class ServiceIdentityRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, name: str, *, for_update: bool = False) -> ServiceIdentity | None:
        stmt = (
            select(ServiceIdentity)
            .where(ServiceIdentity.name == name)
            .options(selectinload(ServiceIdentity.api_keys))
        )
        if for_update:
            stmt = stmt.with_for_update(of=ServiceIdentity)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_after(self, after_name: str | None, limit: int) -> Sequence[ServiceIdentity]:
        stmt = (
            select(ServiceIdentity)
            .options(selectinload(ServiceIdentity.api_keys))
            .order_by(ServiceIdentity.name)
            .limit(limit)
        )
        if after_name is not None:
            stmt = stmt.where(ServiceIdentity.name > after_name)
        return (await self.session.execute(stmt)).scalars().all()

    async def add(self, identity: ServiceIdentity) -> ServiceIdentity:
        self.session.add(identity)
        await self.session.flush()
        return identity

    async def delete(self, identity: ServiceIdentity) -> None:
        await self.session.delete(identity)
        await self.session.flush()


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_with_identity(self, key_id: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.key_id == key_id).options(selectinload(ApiKey.identity))
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        await self.session.flush()
        return key

    async def revoke_all(self, identity_id: uuid.UUID) -> int:
        """Revoke every live key of one identity; returns how many were live."""
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.identity_id == identity_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .execution_options(synchronize_session="fetch")
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def touch(self, key_id: str, *, older_than: datetime) -> None:
        """Record a use; skipped when recorded recently so a busy key does not write on every login."""
        await self.session.execute(
            update(ApiKey)
            .where(
                ApiKey.key_id == key_id,
                (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < older_than),
            )
            .values(last_used_at=func.now())
            .execution_options(synchronize_session=False)
        )


class PolicyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, name: str, *, for_update: bool = False) -> Policy | None:
        stmt = select(Policy).where(Policy.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_after(self, after_name: str | None, limit: int) -> Sequence[Policy]:
        stmt = select(Policy).order_by(Policy.name).limit(limit)
        if after_name is not None:
            stmt = stmt.where(Policy.name > after_name)
        return (await self.session.execute(stmt)).scalars().all()

    async def all(self) -> Sequence[Policy]:
        return (await self.session.execute(select(Policy).order_by(Policy.name))).scalars().all()

    async def add(self, policy: Policy) -> Policy:
        self.session.add(policy)
        await self.session.flush()
        await self.session.refresh(policy)
        return policy

    async def save(self, policy: Policy) -> Policy:
        await self.session.flush()
        await self.session.refresh(policy)
        return policy

    async def delete(self, policy: Policy) -> None:
        await self.session.delete(policy)
        await self.session.flush()

    async def last_version(self, name: str) -> int:
        """The highest version the name ever had (0 if never), so a re-created policy continues it."""
        stmt = select(func.coalesce(func.max(PolicyVersion.version), 0)).where(PolicyVersion.name == name)
        return int((await self.session.execute(stmt)).scalar_one())

    async def add_version(self, version: PolicyVersion) -> None:
        self.session.add(version)
        await self.session.flush()

    async def versions(self, name: str) -> Sequence[PolicyVersion]:
        stmt = select(PolicyVersion).where(PolicyVersion.name == name).order_by(PolicyVersion.version.desc())
        return (await self.session.execute(stmt)).scalars().all()

    async def bump_revision(self) -> int:
        """Count one more change; every gateway polls this number (see PolicyWatcher)."""
        stmt = (
            update(PolicyRevision)
            .where(PolicyRevision.id == 1)
            .values(revision=PolicyRevision.revision + 1)
            .returning(PolicyRevision.revision)
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def revision(self) -> int:
        stmt = select(PolicyRevision.revision).where(PolicyRevision.id == 1)
        return int((await self.session.execute(stmt)).scalar_one_or_none() or 0)
