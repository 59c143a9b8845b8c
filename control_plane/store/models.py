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


class AuditStream(Base):
    """One chain of audit records: each gateway process start writes its own stream."""

    __tablename__ = "audit_streams"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    host: Mapped[str] = mapped_column(Text, default="", server_default="")
    pid: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditEvent(Base):
    """One audit record. `body` holds the exact JSON text that was hashed; the other columns repeat
    fields of it for search, and `pgward audit verify` checks that they agree. Append-only: a
    trigger refuses UPDATE and DELETE (control_plane/migrations/versions/0003_audit.py)."""

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("stream", "seq"),)

    # Insertion order across streams: the API's cursor.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stream: Mapped[uuid.UUID] = mapped_column(Uuid)
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(Text)
    session_uuid: Mapped[str | None] = mapped_column(Text, index=True)
    identity: Mapped[str | None] = mapped_column(Text, index=True)
    username: Mapped[str | None] = mapped_column(Text)
    connection: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str | None] = mapped_column(Text)
    statement_class: Mapped[str | None] = mapped_column(Text)
    statement: Mapped[str | None] = mapped_column(Text)
    sqlstate: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)


class AuditCheckpoint(Base):
    """An Ed25519 signature over a stream's head (stream, seq, hash, time)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stream: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)


class AuditKey(Base):
    """The deployment's checkpoint signing key; the private half is encrypted with PGWARD_SECRET_KEY."""

    __tablename__ = "audit_keys"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    private_key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditPrune(Base):
    """A retention prune: records of `stream` before `first_seq` were deleted; the chain now starts
    at `first_seq` whose previous hash is `prev_hash` (signed, so verify can trust the new start)."""

    __tablename__ = "audit_prunes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stream: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(Text)
    deleted: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)


# --- approvals (control_plane/approvals/) ----------------------------------------------------------

REVIEW_STATES = ("pending", "approved", "denied", "expired", "withdrawn", "consumed")
ACCESS_REQUEST_STATES = ("pending", "approved", "denied", "expired", "withdrawn")


class Review(Base):
    """A statement waiting for (or decided by) approvers: exactly these bytes, by this identity."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'approved', 'denied', 'expired', 'withdrawn', 'consumed')", name="state"
        ),
        CheckConstraint("mode IN ('held', 'deferred')", name="mode"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    state: Mapped[str] = mapped_column(Text, default="pending", index=True)
    mode: Mapped[str] = mapped_column(Text)
    requester_issuer: Mapped[str] = mapped_column(Text)
    requester_subject: Mapped[str] = mapped_column(Text)
    requester_username: Mapped[str] = mapped_column(Text)
    requester_kind: Mapped[str] = mapped_column(Text)
    requester_groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    connection: Mapped[str] = mapped_column(Text)
    session_uuid: Mapped[str | None] = mapped_column(Text)
    # The exact statement text and its SHA-256: a deferred approval matches these bytes only.
    sql: Mapped[str] = mapped_column(Text)
    sql_sha256: Mapped[str] = mapped_column(Text, index=True)
    what: Mapped[str] = mapped_column(Text, default="", server_default="")
    reason: Mapped[str | None] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    approver_groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    break_glass_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    valid_for_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Pending until this instant, then expired.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Deferred: an approved statement may run once until this instant.
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str | None] = mapped_column(Text)


class AccessRequest(Base):
    """A request for a policy for a limited time (just-in-time access)."""

    __tablename__ = "access_requests"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'approved', 'denied', 'expired', 'withdrawn')", name="state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    state: Mapped[str] = mapped_column(Text, default="pending", index=True)
    requester_issuer: Mapped[str] = mapped_column(Text)
    requester_subject: Mapped[str] = mapped_column(Text)
    requester_username: Mapped[str] = mapped_column(Text)
    requester_kind: Mapped[str] = mapped_column(Text)
    requester_groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    connection: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(Text)
    duration_seconds: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    approver_groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    break_glass_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The grant: active from starts_at until ends_at once approved.
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    comment: Mapped[str | None] = mapped_column(Text)


class ApprovalVote(Base):
    """One approver's decision on a review or access request; one per approver and item."""

    __tablename__ = "approval_votes"
    __table_args__ = (
        UniqueConstraint("item_id", "voter_issuer", "voter_subject", name="uq_approval_votes_voter"),
        CheckConstraint("vote IN ('approve', 'deny')", name="vote"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    item_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    voter_issuer: Mapped[str] = mapped_column(Text)
    voter_subject: Mapped[str] = mapped_column(Text)
    voter_username: Mapped[str] = mapped_column(Text)
    vote: Mapped[str] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    via: Mapped[str] = mapped_column(Text, default="api", server_default="api")
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Webhook(Base):
    """An outgoing webhook endpoint: events are delivered to `url`, signed with the endpoint's secret."""

    __tablename__ = "webhooks"
    __table_args__ = (CheckConstraint("format IN ('standard', 'slack')", name="format"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text, unique=True)
    url: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text, default="standard")
    events: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    # Fernet token of the signing secret (whsec_…).
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One event for one endpoint: its body (signed as is), attempts and outcome."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    # The `webhook-id` header: the same for every attempt of this delivery (receivers dedupe on it).
    message_id: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InboundMessage(Base):
    """Signed decision callbacks already processed, by message id: a replay is refused."""

    __tablename__ = "inbound_messages"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class KnownIdentity(Base):
    """The groups an identity last presented (API or gateway): chat decisions check these."""

    __tablename__ = "known_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_known_identities_issuer_subject"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    issuer: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(Text, index=True)
    kind: Mapped[str] = mapped_column(Text)
    groups: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
