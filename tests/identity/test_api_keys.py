"""API keys: format, hashing, and ApiKeyVerifier against a real store."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from control_plane.config import Settings
from control_plane.identity import api_keys
from control_plane.identity.api_keys import ApiKeyVerifier, default_verifier
from control_plane.identity.credentials import BAD_CREDENTIALS, NOT_AUTHORISED, AuthError
from control_plane.identity.service_identities import ServiceIdentityService
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker
from control_plane.store.repositories import ServiceIdentityRepository

pytestmark = pytest.mark.anyio


def test_generated_keys_parse_back() -> None:
    for _ in range(200):
        key = api_keys.generate()
        assert key.token.startswith("pgw_")
        assert api_keys.parse(key.token) == (key.key_id, key.token.split("_", 2)[2])
        assert key.token not in repr(key)
    # 32 random bytes of secret: 43 url-safe base64 characters.
    assert len(api_keys.parse(api_keys.generate().token)[1]) >= 43  # type: ignore[index]


@given(st.text(max_size=80))
def test_parse_never_raises(text: str) -> None:
    api_keys.parse(text)


async def _create(sessionmaker: SessionMaker, settings: Settings, name: str, groups: list[str]) -> str:
    async with sessionmaker() as session:
        service = ServiceIdentityService(session, SecretBox.from_settings(settings).pepper)
        _, key = await service.create(name, groups)
        await session.commit()
    return key.token


async def _refused(verifier: ApiKeyVerifier, user: str | None, secret: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verifier.verify(user, secret)
    assert secret not in info.value.message
    assert secret not in str(info.value)
    assert secret not in (info.value.hint or "")
    return info.value


async def test_valid_key_gives_identity(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci", "deploy"])
    identity = await ApiKeyVerifier(sessionmaker, settings).verify("ci", token)
    assert identity.username == "ci"
    assert identity.groups == ("ci", "deploy")
    assert (identity.kind, identity.credential) == ("service", "api_key")
    # No claimed user (HTTP bearer) is also fine.
    assert (await ApiKeyVerifier(sessionmaker, settings).verify(None, token)).username == "ci"


async def test_last_used_is_recorded(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    await ApiKeyVerifier(sessionmaker, settings).verify("ci", token)
    async with sessionmaker() as session:
        identity = await ServiceIdentityRepository(session).get_by_name("ci")
        assert identity is not None
        assert identity.api_keys[0].last_used_at is not None


async def test_wrong_secret_is_refused(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    error = await _refused(ApiKeyVerifier(sessionmaker, settings), "ci", wrong)
    assert error.sqlstate == BAD_CREDENTIALS


async def test_unknown_and_malformed_keys_are_refused(sessionmaker: SessionMaker, settings: Settings) -> None:
    verifier = ApiKeyVerifier(sessionmaker, settings)
    for secret in ("pgw_000000000000_" + "x" * 43, "pgw_nope", "pgw_", "pgw_abc_def"):
        assert (await _refused(verifier, "ci", secret)).sqlstate == BAD_CREDENTIALS


async def test_wrong_username_is_refused(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    error = await _refused(ApiKeyVerifier(sessionmaker, settings), "alice", token)
    assert error.sqlstate == BAD_CREDENTIALS
    assert '"ci"' in error.message and '"alice"' in error.message


async def test_key_from_another_secret_key_is_refused(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    other = settings.model_copy(update={"secret_key": SecretStr(Fernet.generate_key().decode())})
    error = await _refused(ApiKeyVerifier(sessionmaker, other), "ci", token)
    assert error.sqlstate == BAD_CREDENTIALS


async def test_rotation_revokes_old_key(sessionmaker: SessionMaker, settings: Settings) -> None:
    old = await _create(sessionmaker, settings, "ci", ["ci"])
    async with sessionmaker() as session:
        _, new = await ServiceIdentityService(session, SecretBox.from_settings(settings).pepper).rotate("ci")
        await session.commit()
    verifier = ApiKeyVerifier(sessionmaker, settings)
    assert (await verifier.verify("ci", new.token)).username == "ci"
    error = await _refused(verifier, "ci", old)
    assert error.sqlstate == BAD_CREDENTIALS
    assert "revoked" in error.message


async def test_deleted_identity_key_is_refused(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    async with sessionmaker() as session:
        await ServiceIdentityService(session, SecretBox.from_settings(settings).pepper).delete("ci")
        await session.commit()
    error = await _refused(ApiKeyVerifier(sessionmaker, settings), "ci", token)
    assert error.sqlstate == BAD_CREDENTIALS


async def test_disabled_identity_is_not_authorised(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    async with sessionmaker() as session:
        identity = await ServiceIdentityRepository(session).get_by_name("ci")
        assert identity is not None
        identity.disabled = True
        await session.commit()
    error = await _refused(ApiKeyVerifier(sessionmaker, settings), "ci", token)
    assert error.sqlstate == NOT_AUTHORISED


async def test_composite_routes_by_shape(sessionmaker: SessionMaker, settings: Settings) -> None:
    token = await _create(sessionmaker, settings, "ci", ["ci"])
    verifier = default_verifier(sessionmaker, settings)
    assert (await verifier.verify("ci", token)).username == "ci"
    with pytest.raises(AuthError) as info:
        await verifier.verify("ci", "hunter2")
    assert info.value.sqlstate == BAD_CREDENTIALS
    assert "hunter2" not in info.value.message
