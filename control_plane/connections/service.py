"""Connection management for the API and CLI, and resolution of a connection for a proxy session."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.config import Settings, get_settings
from control_plane.connections.schemas import ConnectionCreate, ConnectionSpec
from control_plane.store.crypto import SecretBox
from control_plane.store.errors import AlreadyExistsError, NotFoundError, PreconditionFailedError
from control_plane.store.etags import if_match_ok
from control_plane.store.models import Connection
from control_plane.store.paging import Page, decode_cursor, page_of
from control_plane.store.repositories import ConnectionRepository

_PLAIN_FIELDS = ("host", "port", "database", "username", "tls_mode", "sslrootcert", "description")


@dataclass(frozen=True)
class ConnectionTarget:
    """What the data plane needs to open the upstream connection of one session."""

    name: str
    host: str
    port: int
    database: str
    username: str
    password: str | None = field(repr=False)  # decrypted; never log
    tls_mode: str
    sslrootcert_path: str | None


class ConnectionService:
    def __init__(self, session: AsyncSession, box: SecretBox) -> None:
        self.repository = ConnectionRepository(session)
        self.box = box

    async def get(self, name: str) -> Connection:
        connection = await self.repository.get_by_name(name)
        if connection is None:
            raise NotFoundError(f'connection "{name}" does not exist')
        return connection

    async def list_page(self, limit: int, cursor: str | None) -> Page[Connection]:
        rows = await self.repository.list_after(decode_cursor(cursor), limit + 1)
        return page_of(rows, limit)

    async def create(self, data: ConnectionCreate) -> Connection:
        if await self.repository.get_by_name(data.name) is not None:
            raise AlreadyExistsError(f'connection "{data.name}" already exists')
        return await self._insert(data.name, data)

    async def _insert(self, name: str, spec: ConnectionSpec) -> Connection:
        connection = Connection(name=name, version=1, **self._plain(spec))
        connection.secret_ciphertext = self._encrypt(spec)
        return await self.repository.add(connection)

    async def put(self, name: str, spec: ConnectionSpec, if_match: str | None) -> tuple[Connection, bool]:
        """Create or replace; returns (connection, created). Identical input changes nothing."""
        current = await self.repository.get_by_name(name, for_update=True)
        if not if_match_ok(if_match, current):
            raise PreconditionFailedError(f'connection "{name}" does not match If-Match')
        if current is None:
            return await self._insert(name, spec), True
        changed = False
        for key, value in self._plain(spec).items():
            if getattr(current, key) != value:
                setattr(current, key, value)
                changed = True
        # An omitted password keeps the stored one: the client cannot read it back to resend it.
        if "password" in spec.model_fields_set and self._password_changed(current, spec):
            current.secret_ciphertext = self._encrypt(spec)
            changed = True
        if changed:
            current.version += 1
            current.updated_at = datetime.now(UTC)
            await self.repository.save(current)
        return current, False

    async def delete(self, name: str, if_match: str | None) -> None:
        current = await self.repository.get_by_name(name, for_update=True)
        if current is None:
            raise NotFoundError(f'connection "{name}" does not exist')
        if not if_match_ok(if_match, current):
            raise PreconditionFailedError(f'connection "{name}" does not match If-Match')
        await self.repository.delete(current)

    @staticmethod
    def _plain(spec: ConnectionSpec) -> dict[str, object]:
        return {key: getattr(spec, key) for key in _PLAIN_FIELDS}

    def _encrypt(self, spec: ConnectionSpec) -> bytes | None:
        return None if spec.password is None else self.box.encrypt(spec.password.get_secret_value())

    def _password_changed(self, current: Connection, spec: ConnectionSpec) -> bool:
        if spec.password is None or current.secret_ciphertext is None:
            return (spec.password is None) != (current.secret_ciphertext is None)
        # Fernet tokens differ on every encryption, so compare plaintexts to keep PUT idempotent.
        return self.box.decrypt(current.secret_ciphertext) != spec.password.get_secret_value()


async def get_connection_for_session(
    session: AsyncSession, name: str, *, settings: Settings | None = None
) -> ConnectionTarget | None:
    """The upstream target of connection `name` with its password decrypted, or None if unknown.

    A stored CA bundle is written once to `state_dir/certs/<sha256>.pem` so the data plane gets a path.
    """
    settings = settings or get_settings()
    connection = await ConnectionRepository(session).get_by_name(name)
    if connection is None:
        return None
    password = None
    if connection.secret_ciphertext is not None:
        password = SecretBox.from_settings(settings).decrypt(connection.secret_ciphertext)
    cert_path = None
    if connection.sslrootcert:
        path = await asyncio.to_thread(_materialise_cert, settings.state_dir, connection.sslrootcert)
        cert_path = str(path)
    return ConnectionTarget(
        name=connection.name,
        host=connection.host,
        port=connection.port,
        database=connection.database,
        username=connection.username,
        password=password,
        tls_mode=connection.tls_mode,
        sslrootcert_path=cert_path,
    )


def _materialise_cert(state_dir: Path, pem: str) -> Path:
    # Content-addressed: a changed bundle gets a new file, so a session never reads a half-written one.
    directory = state_dir / "certs"
    path = directory / f"{hashlib.sha256(pem.encode()).hexdigest()}.pem"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(pem)
    tmp.replace(path)
    return path
