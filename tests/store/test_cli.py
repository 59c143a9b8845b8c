"""`pgward migrate`, `identities create` and `connections add` working directly on the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from typer.testing import CliRunner

from control_plane.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_STORE, app
from control_plane.config import Settings
from control_plane.connections.service import get_connection_for_session
from control_plane.identity.api_keys import ApiKeyVerifier
from control_plane.store import migrate
from control_plane.store.db import create_engine, create_sessionmaker
from tests.store.test_migrations import head


@pytest.fixture
def env(tmp_path: Path, empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("PGWARD_DATABASE_URL", "PGWARD_SECRET_KEY", "PGWARD_DEV_MODE", "PGWARD_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return {
        "PGWARD_DATABASE_URL": empty_database_url,
        "PGWARD_SECRET_KEY": Fernet.generate_key().decode(),
        "PGWARD_STATE_DIR": str(tmp_path / "state"),
    }


def test_migrate(env: dict[str, str]) -> None:
    url = env.pop("PGWARD_DATABASE_URL")
    result = CliRunner().invoke(app, ["migrate", "--database-url", url], env=env)
    assert result.exit_code == 0, result.output
    assert migrate.current(url) == head()


def test_migrate_without_url_is_a_config_error(env: dict[str, str]) -> None:
    del env["PGWARD_DATABASE_URL"]
    result = CliRunner().invoke(app, ["migrate"], env=env)
    assert result.exit_code == EXIT_CONFIG
    assert "PGWARD_DATABASE_URL" in result.output


def test_unreachable_store(env: dict[str, str]) -> None:
    env["PGWARD_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    result = CliRunner().invoke(app, ["identities", "create", "ci", "--group", "ci"], env=env)
    assert result.exit_code == EXIT_STORE
    assert "cannot reach the metadata store" in result.output


def test_identity_and_connection_bootstrap(env: dict[str, str]) -> None:
    runner = CliRunner()
    url = env["PGWARD_DATABASE_URL"]
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0

    result = runner.invoke(app, ["identities", "create", "bob", "--group", "admins", "-g", "dba"], env=env)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("pgw_")
    again = runner.invoke(app, ["identities", "create", "bob", "--group", "admins"], env=env)
    assert again.exit_code == EXIT_FAILED
    assert "already exists" in again.output

    result = runner.invoke(
        app,
        [
            "connections",
            "add",
            "shop",
            "--host",
            "127.0.0.1",
            "--port",
            "5433",
            "--database",
            "shop",
            "--user",
            "app",
            "--tls-mode",
            "disable",
            "--password-stdin",
        ],
        env=env,
        input="upstream-pw\n",
    )
    assert result.exit_code == 0, result.output
    assert "upstream-pw" not in result.output
    bad = runner.invoke(
        app,
        ["connections", "add", "x", "--host", "h", "--database", "d", "--user", "u", "--tls-mode", "bogus"],
        env=env,
    )
    assert bad.exit_code == EXIT_CONFIG
    assert "tls_mode" in bad.output

    listing = runner.invoke(app, ["identities", "list"], env=env)
    assert "bob" in listing.stdout and token not in listing.stdout
    assert "shop" in runner.invoke(app, ["connections", "list"], env=env).stdout

    settings = Settings(
        database_url=url,
        secret_key=SecretStr(env["PGWARD_SECRET_KEY"]),
        state_dir=Path(env["PGWARD_STATE_DIR"]),
    )

    async def check() -> None:
        engine = create_engine(url)
        sessionmaker = create_sessionmaker(engine)
        try:
            identity = await ApiKeyVerifier(sessionmaker, settings).verify("bob", token)
            assert identity.groups == ("admins", "dba")
            async with sessionmaker() as session:
                target = await get_connection_for_session(session, "shop", settings=settings)
            assert target is not None and target.password == "upstream-pw" and target.port == 5433
        finally:
            await engine.dispose()

    asyncio.run(check())
