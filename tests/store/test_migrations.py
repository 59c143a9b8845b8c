"""Migrations run from an empty database, twice without harm, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from control_plane.store import migrate
from control_plane.store.models import Base


def head() -> str:
    """The single head revision (a second head would be a migration chaining error)."""
    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def test_upgrade_from_empty_creates_tables(empty_database_url: str) -> None:
    assert migrate.current(empty_database_url) is None
    migrate.upgrade(empty_database_url)
    assert migrate.current(empty_database_url) == head()
    engine = create_engine(empty_database_url, poolclass=NullPool)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"connections", "service_identities", "api_keys", "alembic_version"} <= tables


def test_upgrade_is_idempotent(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.upgrade(empty_database_url)
    assert migrate.current(empty_database_url) == head()


def test_migrations_match_models(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    engine = create_engine(empty_database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrade_accepts_libpq_uri(empty_database_url: str) -> None:
    libpq = empty_database_url.replace("postgresql+psycopg://", "postgresql://")
    migrate.upgrade(libpq)
    assert migrate.current(libpq) == head()
