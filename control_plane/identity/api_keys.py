"""API keys of service identities: `pgw_<key_id>_<secret>`, stored as an HMAC of the secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from control_plane.config import Settings
from control_plane.identity.credentials import AuthError, CompositeVerifier, Identity
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker
from control_plane.store.repositories import ApiKeyRepository, ServiceIdentityRepository

PREFIX = "pgw_"
ISSUER = "pgward"
_KEY_ID_BYTES = 6  # 12 hex characters: public, only needs to be unique
_SECRET_BYTES = 32  # 256 bits of entropy
# last_used_at is informational; recording it at most this often keeps logins read-only.
_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class GeneratedKey:
    key_id: str
    token: str  # the full `pgw_…` string: shown once, never stored

    def __repr__(self) -> str:
        return f"GeneratedKey(key_id={self.key_id!r}, token=<hidden>)"


def generate() -> GeneratedKey:
    # key_id is hex, so it never contains `_` and the split in parse() is unambiguous even
    # though token_urlsafe may put `_` in the secret.
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return GeneratedKey(key_id=key_id, token=f"{PREFIX}{key_id}_{secret}")


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def parse(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 2 * _KEY_ID_BYTES or not secret:
        return None
    return key_id, secret


def hash_secret(pepper: bytes, key_id: str, secret: str) -> bytes:
    # HMAC with a server-side pepper: a leaked store alone does not allow offline guessing, and the
    # key_id binds each hash to its row.
    return hmac.new(pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).digest()


def hash_token(pepper: bytes, token: str) -> bytes:
    parsed = parse(token)
    if parsed is None:
        raise ValueError("not a pgward API key")
    return hash_secret(pepper, *parsed)


class ApiKeyVerifier:
    """Verifies `pgw_…` keys against the store."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings) -> None:
        self._sessionmaker = sessionmaker
        self._pepper = SecretBox.from_settings(settings).pepper

    async def verify(self, user: str | None, secret: str) -> Identity:
        parsed = parse(secret)
        if parsed is None:
            raise AuthError.bad_credentials("malformed pgward API key")
        key_id, key_secret = parsed
        presented = hash_secret(self._pepper, key_id, key_secret)
        async with self._sessionmaker() as session:
            key = await ApiKeyRepository(session).get_with_identity(key_id)
            # Compare even when the key_id is unknown, so timing does not reveal which key_ids exist.
            stored = key.key_hash if key is not None else b"\0" * len(presented)
            if not hmac.compare_digest(presented, stored) or key is None:
                raise AuthError.bad_credentials("invalid API key")
            if key.revoked_at is not None:
                raise AuthError.bad_credentials(f"API key {key_id} has been revoked")
            identity = key.identity
            if user is not None and user != identity.name:
                raise AuthError.bad_credentials(
                    f'API key {key_id} belongs to service identity "{identity.name}", not "{user}"',
                    hint=f"connect with user={identity.name}",
                )
            if identity.disabled:
                raise AuthError.not_authorised(f'service identity "{identity.name}" is disabled')
            await ApiKeyRepository(session).touch(key_id, older_than=datetime.now(UTC) - _TOUCH_INTERVAL)
            await session.commit()
            return Identity(
                subject=f"service:{identity.name}",
                username=identity.name,
                groups=tuple(identity.groups),
                issuer=ISSUER,
                kind="service",
                credential="api_key",
            )


def stored_service_groups(sessionmaker: SessionMaker) -> Callable[[str], Awaitable[tuple[str, ...] | None]]:
    """For OIDC tokens mapped to a service identity: its stored groups (None if not stored)."""

    async def lookup(name: str) -> tuple[str, ...] | None:
        async with sessionmaker() as session:
            identity = await ServiceIdentityRepository(session).get_by_name(name)
            if identity is None:
                return None
            if identity.disabled:
                raise AuthError.not_authorised(f'service identity "{name}" is disabled')
            return tuple(identity.groups)

    return lookup


def default_verifier(sessionmaker: SessionMaker, settings: Settings) -> CompositeVerifier:
    """The verifier the API and the proxy use: every credential kind pgward knows."""
    from control_plane.identity.oidc import OidcVerifier, looks_like_jwt

    verifier = CompositeVerifier()
    verifier.register(looks_like_api_key, ApiKeyVerifier(sessionmaker, settings))
    if settings.oidc_issuers:
        oidc = OidcVerifier.from_settings(settings, service_groups=stored_service_groups(sessionmaker))
        verifier.register(looks_like_jwt, oidc)
    return verifier
