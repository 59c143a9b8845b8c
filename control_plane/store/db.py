"""Async SQLAlchemy engine and session factory for the metadata store (psycopg 3)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SessionMaker = async_sessionmaker[AsyncSession]

_DRIVER = "postgresql+psycopg"


def sqlalchemy_url(url: str) -> str:
    """Accept a libpq URI (`postgresql://…`, `postgres://…`) too, and pin the psycopg 3 driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("the metadata store URL must look like postgresql+psycopg://user@host/db")
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"):
        return f"{_DRIVER}://{rest}"
    raise ValueError(f"unsupported metadata store URL scheme {scheme!r}: the store must be PostgreSQL")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine; pre-ping because the store may restart under a long-running gateway."""
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(sqlalchemy_url(url), **kwargs)


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    # expire_on_commit=False: endpoints serialise objects after the commit in the session dependency.
    return async_sessionmaker(engine, expire_on_commit=False)
