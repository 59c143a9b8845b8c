"""Connection storage: encryption at rest and resolution for proxy sessions."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from control_plane.config import Settings
from control_plane.connections.schemas import ConnectionCreate
from control_plane.connections.service import ConnectionService, get_connection_for_session
from control_plane.store.crypto import SecretBox, SecretDecryptError
from control_plane.store.db import SessionMaker
from control_plane.store.models import Connection

pytestmark = pytest.mark.anyio


def ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def _add(sessionmaker: SessionMaker, settings: Settings, **fields: object) -> None:
    data = {"name": "shop", "host": "127.0.0.1", "port": 5432, "database": "shop", "username": "app"}
    data.update(fields)
    async with sessionmaker() as session:
        await ConnectionService(session, SecretBox.from_settings(settings)).create(
            ConnectionCreate.model_validate(data)
        )
        await session.commit()


async def test_target_has_decrypted_password(sessionmaker: SessionMaker, settings: Settings) -> None:
    await _add(sessionmaker, settings, password="pw-123", tls_mode="disable")
    async with sessionmaker() as session:
        stored = (await session.execute(select(Connection))).scalar_one()
        assert stored.secret_ciphertext is not None
        assert b"pw-123" not in stored.secret_ciphertext
        target = await get_connection_for_session(session, "shop", settings=settings)
        assert await get_connection_for_session(session, "other", settings=settings) is None
    assert target is not None
    assert (target.host, target.port, target.database, target.username) == ("127.0.0.1", 5432, "shop", "app")
    assert target.password == "pw-123"
    assert target.tls_mode == "disable"
    assert target.sslrootcert_path is None
    assert "pw-123" not in repr(target)


async def test_trust_target_has_no_password(sessionmaker: SessionMaker, settings: Settings) -> None:
    await _add(sessionmaker, settings)
    async with sessionmaker() as session:
        target = await get_connection_for_session(session, "shop", settings=settings)
    assert target is not None and target.password is None
    assert target.tls_mode == "verify-full"


async def test_sslrootcert_is_written_to_a_file(sessionmaker: SessionMaker, settings: Settings) -> None:
    pem = ca_pem()
    await _add(sessionmaker, settings, sslrootcert=pem, tls_mode="verify-full")
    async with sessionmaker() as session:
        target = await get_connection_for_session(session, "shop", settings=settings)
        again = await get_connection_for_session(session, "shop", settings=settings)
    assert target is not None and target.sslrootcert_path is not None
    path = Path(target.sslrootcert_path)
    assert path.read_bytes().decode() == pem  # noqa: ASYNC240  # a tiny local file
    assert path.parent == settings.state_dir / "certs"
    assert again is not None and again.sslrootcert_path == target.sslrootcert_path


async def test_wrong_secret_key_fails_clearly(sessionmaker: SessionMaker, settings: Settings) -> None:
    await _add(sessionmaker, settings, password="pw-123")
    from cryptography.fernet import Fernet
    from pydantic import SecretStr

    other = settings.model_copy(update={"secret_key": SecretStr(Fernet.generate_key().decode())})
    async with sessionmaker() as session:
        with pytest.raises(SecretDecryptError, match="PGWARD_SECRET_KEY") as info:
            await get_connection_for_session(session, "shop", settings=other)
    assert "pw-123" not in str(info.value)
