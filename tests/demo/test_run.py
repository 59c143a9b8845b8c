"""`pgward demo` steps: prepare, bootstrap, demo.json; and the whole command when the gateway exists."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_plane.demo import run

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo_env(pg_base_dir: Path) -> Iterator[run.DemoEnvironment]:
    env = run.prepare(pg_base_dir / "demo-state")
    try:
        yield env
    finally:
        env.stop()


def _bootstrap(env: run.DemoEnvironment, known: dict[str, str]) -> dict[str, str]:
    return asyncio.run(
        run.bootstrap(env.settings, target_port=env.target.port or 0, shop=env.shop, known_tokens=known)
    )


def test_prepare_layout(demo_env: run.DemoEnvironment) -> None:
    state = demo_env.state_dir
    for name in ("target", "store", "tls/ca.crt", "tls/server.crt", "tls/server.key", "secret.key"):
        assert (state / name).exists(), name
    for secret in ("secret.key", run.SECRETS_FILE, "tls/server.key"):
        assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600, secret
    assert demo_env.settings.dev_mode
    assert demo_env.settings.tls_cert == state / "tls" / "server.crt"
    assert demo_env.versions["target"].startswith("18.")
    # The store is reached as its own role, not the superuser.
    assert demo_env.settings.database_url is not None
    assert demo_env.settings.database_url.startswith("postgresql+psycopg://pgward:")


def test_prepare_is_idempotent(demo_env: run.DemoEnvironment) -> None:
    again = run.prepare(demo_env.state_dir)
    assert (again.target.port, again.store.port) == (demo_env.target.port, demo_env.store.port)
    assert again.shop == demo_env.shop
    assert again.settings.database_url == demo_env.settings.database_url


def test_bootstrap_registers_and_reuses(demo_env: run.DemoEnvironment) -> None:
    tokens = _bootstrap(demo_env, {})
    assert set(tokens) == {"ci", "demo-admin"}
    assert all(t.startswith("pgw_") for t in tokens.values())
    assert _bootstrap(demo_env, tokens) == tokens
    # An unknown (or revoked) token is replaced by a fresh key; the other identity keeps its own.
    fresh = _bootstrap(demo_env, {"ci": "pgw_000000000000_nope", "demo-admin": tokens["demo-admin"]})
    assert fresh["ci"] != tokens["ci"] and fresh["demo-admin"] == tokens["demo-admin"]
    assert _bootstrap(demo_env, {"ci": tokens["ci"], "demo-admin": fresh["demo-admin"]})["ci"] != tokens["ci"]

    store_dsn = (demo_env.settings.database_url or "").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(store_dsn) as conn:
        conn_row = conn.execute(
            "SELECT host, port, database, username, tls_mode, secret_ciphertext IS NOT NULL"
            " FROM connections WHERE name = 'shop'"
        ).fetchone()
        groups: dict[str, list[str]] = dict(
            conn.execute("SELECT name, groups FROM service_identities").fetchall()
        )
    assert conn_row == ("127.0.0.1", demo_env.target.port, "shop", "shop_owner", "disable", True)
    assert groups == {"ci": ["ci"], "demo-admin": ["admins"]}


def test_stored_credential_decrypts_to_shop_owner(demo_env: run.DemoEnvironment) -> None:
    from control_plane.store.crypto import SecretBox

    _bootstrap(demo_env, {})
    store_dsn = (demo_env.settings.database_url or "").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(store_dsn) as conn:
        row = conn.execute("SELECT secret_ciphertext FROM connections WHERE name = 'shop'").fetchone()
    assert row is not None
    password = SecretBox.from_settings(demo_env.settings).decrypt(row[0])
    with psycopg.connect(demo_env.target.dsn("shop", "shop_owner", password)) as conn:
        assert conn.execute("SELECT count(*) FROM shop.customers").fetchone() == (1000,)


def test_demo_json(demo_env: run.DemoEnvironment) -> None:
    tokens = _bootstrap(demo_env, {})
    path = run.write_demo_json(demo_env, tokens)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["proxy"] == {"host": "127.0.0.1", "port": 6543, "sslrootcert": str(demo_env.tls.ca_cert)}
    assert data["api_url"] == "http://127.0.0.1:8080"
    assert data["connection"] == "shop"
    assert data["identities"] == {"ci": {"user": "ci", "token": tokens["ci"], "groups": ["ci"]}}
    assert data["admin_token"] == tokens["demo-admin"]
    with psycopg.connect(data["target_dsn"]) as conn:
        assert conn.execute(
            "SELECT current_setting('is_superuser'), inet_server_addr()::text"
        ).fetchone() == (
            "on",
            "127.0.0.1/32",
        )
    with psycopg.connect(data["store_url"].replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("pgward",)
    message = run.ready_message(demo_env, tokens)
    assert (
        f'PGPASSWORD={tokens["ci"]} psql "host=127.0.0.1 port=6543 dbname=shop user=ci '
        f'sslmode=verify-full sslrootcert={demo_env.state_dir}/tls/ca.crt"'
    ) in message


def test_listen_settings_from_environment(
    demo_env: run.DemoEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGWARD_PROXY_LISTEN", "0.0.0.0:7001")
    monkeypatch.setenv("PGWARD_API_LISTEN", "[::1]:7002")
    env = run.prepare(demo_env.state_dir)
    data = json.loads(run.write_demo_json(env, _bootstrap(env, {})).read_text())
    assert (data["proxy"]["host"], data["proxy"]["port"]) == ("127.0.0.1", 7001)
    assert data["api_url"] == "http://[::1]:7002"


def test_pgward_demo_end_to_end(pg_tmp_path: Path) -> None:
    state = pg_tmp_path / "state"
    proxy_port, api_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PGWARD_PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
        "PGWARD_API_LISTEN": f"127.0.0.1:{api_port}",
    }
    code = f"from pathlib import Path; from control_plane.demo.run import main; main(Path({str(state)!r}))"
    log = (pg_tmp_path / "demo.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (state / "demo.json").exists():
            assert proc.poll() is None, (pg_tmp_path / "demo.log").read_text()
            assert time.monotonic() < deadline, "demo.json did not appear"
            time.sleep(0.2)
        data = json.loads((state / "demo.json").read_text())
        assert data["proxy"]["port"] == proxy_port
        checker = ROOT.parent / "shared" / "tools" / "check-demo-contract"
        if checker.exists():
            result = subprocess.run(
                [sys.executable, str(checker), str(state), "--identities", "alice,bob,carol,ci,agent"],
                capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stdout + result.stderr
        assert "psql" in (pg_tmp_path / "demo.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0, (pg_tmp_path / "demo.log").read_text()
    assert not (state / "demo.json").exists()
    for cluster in ("target", "store"):
        assert not (state / cluster / "postmaster.pid").exists(), cluster


def test_fresh_store_url_is_migrated_and_private(fresh_store_url: str, store_pg: object) -> None:
    dsn = fresh_store_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM connections").fetchone() == (0,)
        assert conn.execute("SELECT current_database()").fetchone() != ("pgward_template",)
