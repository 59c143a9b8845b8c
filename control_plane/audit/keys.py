"""The deployment's checkpoint signing key (Ed25519).

Generated on first use and stored in `audit_keys`, the private half encrypted with the same Fernet
key as connection secrets (PGWARD_SECRET_KEY). The public half is exported (`pgward audit
public-key`) so an auditor can verify exports without access to the store."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.store.crypto import SecretBox
from control_plane.store.models import AuditKey


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_pem(text: str | bytes) -> Ed25519PublicKey:
    data = text.encode() if isinstance(text, str) else text
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the audit public key must be an Ed25519 key")
    return key


@dataclass(frozen=True)
class SigningKey:
    id: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode()


async def signing_key(session: AsyncSession, box: SecretBox) -> SigningKey:
    """The deployment's signing key, created when the store has none (first one wins between replicas)."""
    row = (
        await session.execute(select(AuditKey).order_by(AuditKey.created_at).limit(1))
    ).scalar_one_or_none()
    if row is None:
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = private.public_key()
        await session.execute(
            insert(AuditKey)
            .values(
                id=key_id(public),
                public_key=public_pem(public),
                private_key_ciphertext=box.encrypt(base64.b64encode(raw).decode()),
            )
            .on_conflict_do_nothing()
        )
        await session.commit()
        row = (await session.execute(select(AuditKey).order_by(AuditKey.created_at).limit(1))).scalar_one()
    raw = base64.b64decode(box.decrypt(row.private_key_ciphertext))
    return SigningKey(row.id, Ed25519PrivateKey.from_private_bytes(raw))


async def public_keys(session: AsyncSession) -> dict[str, Ed25519PublicKey]:
    rows = (await session.execute(select(AuditKey))).scalars()
    return {row.id: load_public_pem(row.public_key) for row in rows}
