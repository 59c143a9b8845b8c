"""SQLAlchemy models of the metadata store."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so migrations can refer to them and autogenerate diffs stay quiet.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TLS_MODES = ("disable", "require", "verify-full")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Connection(Base):
    """A registered target database; its name is what clients send as `database`."""

    __tablename__ = "connections"
    __table_args__ = (
        CheckConstraint("tls_mode IN ('disable', 'require', 'verify-full')", name="tls_mode"),
        CheckConstraint("port BETWEEN 1 AND 65535", name="port"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, unique=True)
    host: Mapped[str] = mapped_column(Text)
    port: Mapped[int] = mapped_column(Integer)
    database: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(Text)
    tls_mode: Mapped[str] = mapped_column(Text)
    # PEM text of the CA bundle (not a path): the store is shared by every gateway replica, and a
    # path would only be valid on the machine that registered it.
    sslrootcert: Mapped[str | None] = mapped_column(Text)
    # Fernet token of the upstream password; NULL means the target uses trust (or cert) auth.
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped on every real change; the API's ETag.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class ServiceIdentity(Base):
    """A non-human caller (CI job, agent) that authenticates with API keys."""

    __tablename__ = "service_identities"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, unique=True)
    groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default="{}")
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="identity", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiKey(Base):
    """One API key of a service identity; only an HMAC of its secret part is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    identity_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("service_identities.id", ondelete="CASCADE"), index=True
    )
    key_id: Mapped[str] = mapped_column(Text, unique=True)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    identity: Mapped[ServiceIdentity] = relationship(back_populates="api_keys")


class Policy(Base):
    """The current version of a policy document (control_plane/policy/documents.py)."""

    __tablename__ = "policies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, unique=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Bumped on every real change; the API's ETag. Continues across delete and re-create.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PolicyVersion(Base):
    """Every version a policy ever had, kept for review and rollback; `document` NULL marks a deletion."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, index=True)
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    author: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PolicyRevision(Base):
    """One row: a counter bumped by every policy change, so every gateway process notices changes."""

    __tablename__ = "policy_revision"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
