"""Policy management for the API and CLI: idempotent PUT with versions kept, ETags, deletion."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.policy.documents import PolicyDocument
from control_plane.store.db import SessionMaker
from control_plane.store.errors import InvalidInputError, NotFoundError, PreconditionFailedError
from control_plane.store.etags import if_match_ok
from control_plane.store.models import Policy, PolicyVersion
from control_plane.store.paging import Page, decode_cursor, page_of
from control_plane.store.repositories import PolicyRepository


class PolicyService:
    """Services never commit; the caller does, then tells the gateway (policy.runtime.policy_changed)."""

    def __init__(self, session: AsyncSession) -> None:
        self.repository = PolicyRepository(session)

    async def get(self, name: str) -> Policy:
        policy = await self.repository.get_by_name(name)
        if policy is None:
            raise NotFoundError(f'policy "{name}" does not exist')
        return policy

    async def list_page(self, limit: int, cursor: str | None) -> Page[Policy]:
        rows = await self.repository.list_after(decode_cursor(cursor), limit + 1)
        return page_of(rows, limit)

    async def all(self) -> Sequence[Policy]:
        return await self.repository.all()

    async def put(
        self, name: str, document: PolicyDocument, if_match: str | None, *, author: str = ""
    ) -> tuple[Policy, bool, bool]:
        """Create or replace; returns (policy, created, changed). An identical document changes nothing."""
        if document.name != name:
            raise InvalidInputError(f'the document is named "{document.name}" but the URL names "{name}"')
        current = await self.repository.get_by_name(name, for_update=True)
        if not if_match_ok(if_match, current):
            raise PreconditionFailedError(f'policy "{name}" does not match If-Match')
        spec = document.spec()
        if current is not None and current.document == spec:
            return current, False, False
        version = max(await self.repository.last_version(name), current.version if current else 0) + 1
        if current is None:
            policy = await self.repository.add(Policy(name=name, document=spec, version=version))
            created = True
        else:
            current.document = spec
            current.version = version
            current.updated_at = datetime.now(UTC)
            policy = await self.repository.save(current)
            created = False
        await self.repository.add_version(
            PolicyVersion(name=name, version=version, document=spec, author=author)
        )
        await self.repository.bump_revision()
        return policy, created, True

    async def delete(self, name: str, if_match: str | None, *, author: str = "") -> None:
        current = await self.repository.get_by_name(name, for_update=True)
        if current is None:
            raise NotFoundError(f'policy "{name}" does not exist')
        if not if_match_ok(if_match, current):
            raise PreconditionFailedError(f'policy "{name}" does not match If-Match')
        # The deletion is a version of its own, so the history shows when access ended and who ended it.
        await self.repository.add_version(
            PolicyVersion(name=name, version=current.version + 1, document=None, author=author)
        )
        await self.repository.delete(current)
        await self.repository.bump_revision()

    async def versions(self, name: str) -> Sequence[PolicyVersion]:
        rows = await self.repository.versions(name)
        if not rows:
            raise NotFoundError(f'policy "{name}" has no versions')
        return rows


async def put_documents(
    sessionmaker: SessionMaker, documents: Sequence[PolicyDocument], *, author: str
) -> int:
    """PUT each document (idempotent) in one transaction; returns how many changed."""
    from control_plane.policy.runtime import policy_changed

    changed = 0
    async with sessionmaker() as session:
        service = PolicyService(session)
        for document in documents:
            _, _, did = await service.put(document.name, document, None, author=author)
            changed += did
        await session.commit()
    if changed:
        await policy_changed.notify()
    return changed
