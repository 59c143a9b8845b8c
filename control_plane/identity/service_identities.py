"""Service identities and their API keys: create, rotate, delete (services never commit)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.identity import api_keys
from control_plane.identity.api_keys import GeneratedKey
from control_plane.store.errors import AlreadyExistsError, NotFoundError
from control_plane.store.models import ApiKey, ServiceIdentity
from control_plane.store.paging import Page, decode_cursor, page_of
from control_plane.store.repositories import ApiKeyRepository, ServiceIdentityRepository


class ServiceIdentityService:
    def __init__(self, session: AsyncSession, pepper: bytes) -> None:
        self.identities = ServiceIdentityRepository(session)
        self.keys = ApiKeyRepository(session)
        self.pepper = pepper

    async def get(self, name: str) -> ServiceIdentity:
        identity = await self.identities.get_by_name(name)
        if identity is None:
            raise NotFoundError(f'service identity "{name}" does not exist')
        return identity

    async def list_page(self, limit: int, cursor: str | None) -> Page[ServiceIdentity]:
        rows = await self.identities.list_after(decode_cursor(cursor), limit + 1)
        return page_of(rows, limit)

    async def create(
        self, name: str, groups: Sequence[str], description: str = ""
    ) -> tuple[ServiceIdentity, GeneratedKey]:
        if await self.identities.get_by_name(name) is not None:
            raise AlreadyExistsError(f'service identity "{name}" already exists')
        # Keep the order the caller gave but drop repeats.
        identity = ServiceIdentity(name=name, groups=list(dict.fromkeys(groups)), description=description)
        await self.identities.add(identity)
        return identity, await self._new_key(identity)

    async def rotate(self, name: str) -> tuple[ServiceIdentity, GeneratedKey]:
        """Revoke every live key of the identity and issue a new one."""
        identity = await self.identities.get_by_name(name, for_update=True)
        if identity is None:
            raise NotFoundError(f'service identity "{name}" does not exist')
        await self.keys.revoke_all(identity.id)
        return identity, await self._new_key(identity)

    async def delete(self, name: str) -> None:
        """Delete the identity; its keys go with it (ON DELETE CASCADE), so they stop working at once."""
        identity = await self.identities.get_by_name(name, for_update=True)
        if identity is None:
            raise NotFoundError(f'service identity "{name}" does not exist')
        await self.identities.delete(identity)

    async def _new_key(self, identity: ServiceIdentity) -> GeneratedKey:
        generated = api_keys.generate()
        await self.keys.add(
            ApiKey(
                identity_id=identity.id,
                key_id=generated.key_id,
                key_hash=api_keys.hash_token(self.pepper, generated.token),
            )
        )
        return generated
