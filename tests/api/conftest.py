"""Fixtures: a real PostgreSQL metadata store (see tests/store/fixtures.py)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from control_plane.api import create_app
from control_plane.config import Settings
from control_plane.store.db import SessionMaker
from tests.api.helpers import bearer, make_identity
from tests.store.fixtures import *  # noqa: F403


@pytest.fixture
def app(settings: Settings, sessionmaker: SessionMaker) -> FastAPI:
    return create_app(settings, sessionmaker)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pgward.test") as client:
        yield client


@pytest.fixture
async def admin_headers(sessionmaker: SessionMaker, settings: Settings) -> dict[str, str]:
    return bearer(await make_identity(sessionmaker, settings, "root", ["ops", "admins"]))


@pytest.fixture
async def user_headers(sessionmaker: SessionMaker, settings: Settings) -> dict[str, str]:
    return bearer(await make_identity(sessionmaker, settings, "ci", ["ci"]))
