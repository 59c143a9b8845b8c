"""Run the Alembic migrations of the metadata store programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from control_plane.store.db import sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Any fixed number: serialises `pgward migrate` runs started at the same time by several replicas.
_ADVISORY_LOCK_KEY = 0x7067_7761_7264


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations; works from an installed wheel."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url is not None:
        # Passed through attributes rather than set_main_option: ConfigParser would try to
        # interpolate a `%` in a URL-encoded password.
        config.attributes["database_url"] = sqlalchemy_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on the given store, in one transaction; safe to call from any thread."""
    engine = create_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current(database_url: str) -> str | None:
    """The revision the store is at, or None for an empty store."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
