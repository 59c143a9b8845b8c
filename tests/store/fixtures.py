"""Fixtures for tests of the metadata store, the identity verifiers and the API, on a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import text

from control_plane.config import Settings
from control_plane.pgserver import LocalPostgres
from control_plane.store import migrate
from control_plane.store.db import SessionMaker, create_engine, create_sessionmaker

__all__ = ["anyio_backend", "empty_database_url", "sessionmaker", "settings", "store_cluster", "store_url"]

_TABLES = "api_keys, service_identities, connections, policies, policy_versions"


@pytest.fixture(scope="session")
def store_cluster(store_pg: LocalPostgres) -> LocalPostgres:
    """The shared metadata-store cluster of tests/fixtures/postgres.py."""
    return store_pg


@pytest.fixture(scope="session")
def store_url(store_cluster: LocalPostgres) -> str:
    """A migrated store database shared by the session; `sessionmaker` empties it before each test."""
    name = f"pgward_store_{uuid.uuid4().hex[:8]}"
    store_cluster.create_database(name)
    url = store_cluster.sqlalchemy_url(name)
    migrate.upgrade(url)
    return url


@pytest.fixture
def empty_database_url(store_cluster: LocalPostgres) -> Iterator[str]:
    """A fresh database with nothing in it, dropped afterwards."""
    name = f"pgward_empty_{uuid.uuid4().hex[:8]}"
    store_cluster.create_database(name)
    yield store_cluster.sqlalchemy_url(name)
    with store_cluster.connect() as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path, store_url: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        database_url=store_url,
        secret_key=SecretStr(Fernet.generate_key().decode()),
        admin_groups=["admins"],
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def sessionmaker(store_url: str, anyio_backend: str) -> AsyncIterator[SessionMaker]:
    """A session factory on a store emptied before the test (each test starts from a clean store)."""
    engine = create_engine(store_url)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} CASCADE"))
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
