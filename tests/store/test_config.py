"""Settings: environment parsing and the secret key rules."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from control_plane.config import ConfigError, Settings


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGWARD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PGWARD_ADMIN_GROUPS", "admins, ops")
    monkeypatch.setenv("PGWARD_DENY_STATEMENTS", '["DropdbStmt"]')
    settings = Settings()
    assert settings.state_dir == tmp_path
    assert settings.admin_groups == ["admins", "ops"]
    assert settings.deny_statements == ["DropdbStmt"]
    assert settings.proxy_listen == "127.0.0.1:6543"
    assert settings.api_listen == "127.0.0.1:8080"
    assert settings.max_message_size == 128 * 1024 * 1024
    assert settings.dev_mode is False
    assert settings.database_url is None
    with pytest.raises(ConfigError, match="PGWARD_DATABASE_URL"):
        settings.require_database_url()


def test_missing_key_is_an_error_outside_dev_mode(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    with pytest.raises(ConfigError, match="PGWARD_SECRET_KEY"):
        settings.secret_key_bytes()
    assert not (tmp_path / "secret.key").exists()


def test_dev_mode_creates_private_key_file_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", dev_mode=True)
    key = settings.secret_key_bytes()
    path = tmp_path / "state" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.secret_key_bytes() == key
    # Once the file exists, it is used outside dev mode too.
    assert Settings(state_dir=tmp_path / "state").secret_key_bytes() == key


def test_explicit_key_wins_and_is_checked(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    assert Settings(state_dir=tmp_path, secret_key=SecretStr(key.decode())).secret_key_bytes() == key
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        Settings(state_dir=tmp_path, secret_key=SecretStr("short")).secret_key_bytes()
    assert "short" not in repr(Settings(state_dir=tmp_path, secret_key=SecretStr("short")))
