"""Helpers for API tests: an app on the real store and identities with keys."""

from __future__ import annotations

from control_plane.config import Settings
from control_plane.identity.service_identities import ServiceIdentityService
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker


async def make_identity(sessionmaker: SessionMaker, settings: Settings, name: str, groups: list[str]) -> str:
    """Create a service identity directly in the store; returns its API key."""
    async with sessionmaker() as session:
        service = ServiceIdentityService(session, SecretBox.from_settings(settings).pepper)
        _, key = await service.create(name, groups)
        await session.commit()
    return key.token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
