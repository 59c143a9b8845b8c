"""LocalPostgres: start, stop, adopting a running server, restarts, root handling and versions."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from control_plane.pgserver import LocalPostgres, LocalPostgresError
from tests.fixtures.postgres import TargetDatabase


def _postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_start_stop_restart(pg_tmp_path: Path) -> None:
    pg = LocalPostgres(pg_tmp_path / "data", durable=False)
    pg.start()
    try:
        assert pg.is_running()
        assert pg.version().startswith("18.")
        with psycopg.connect(pg.dsn()) as conn:
            row = conn.execute(
                "SELECT inet_server_addr()::text, current_setting('listen_addresses')"
            ).fetchone()
        assert row == ("127.0.0.1/32", "127.0.0.1")
        port, password = pg.port, pg.superuser_password

        # Starting again, from this object or another one, adopts the running server.
        assert pg.start() is pg
        other = LocalPostgres(pg_tmp_path / "data").start()
        assert (other.port, other.superuser_password) == (port, password)
        assert _postmaster_pid(other) == _postmaster_pid(pg)

        pg.stop()
        assert not pg.is_running()
        pg.stop()  # stopping a stopped cluster is a no-op

        # A restart reuses the data, the port (when free) and the stored superuser password.
        again = LocalPostgres(pg_tmp_path / "data").start()
        assert (again.port, again.superuser_password) == (port, password)
        with psycopg.connect(again.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.stop()


def test_context_manager_and_urls(pg_tmp_path: Path) -> None:
    with LocalPostgres(pg_tmp_path / "data", durable=False, superuser_password="p@ss:w/rd") as pg:
        assert pg.dsn() == f"postgresql://postgres:p%40ss%3Aw%2Frd@127.0.0.1:{pg.port}/postgres"
        assert pg.sqlalchemy_url("x", "u", "v") == f"postgresql+psycopg://u:v@127.0.0.1:{pg.port}/x"
        pg.create_database("shop")
        pg.create_database("shop")  # idempotent
        with psycopg.connect(pg.dsn("shop")) as conn:
            settings: dict[str, str] = dict(conn.execute("SELECT name, setting FROM pg_settings").fetchall())
        assert settings["fsync"] == "off"
        assert settings["server_encoding"] == "UTF8"
        assert settings["password_encryption"] == "scram-sha-256"
    assert not pg.is_running()


def test_host_connections_need_scram(pg_tmp_path: Path) -> None:
    with LocalPostgres(pg_tmp_path / "data", durable=False) as pg:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.dsn(password="wrong")).close()
        hba = (pg.data_dir / "pg_hba.conf").read_text()
        assert "127.0.0.1/32    scram-sha-256" in hba
        assert "trust" not in "".join(line for line in hba.splitlines() if line.startswith("host"))


def test_password_change_on_restart(pg_tmp_path: Path) -> None:
    LocalPostgres(pg_tmp_path / "data", durable=False, superuser_password="one").start().stop()
    with LocalPostgres(pg_tmp_path / "data", superuser_password="two") as pg:
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert LocalPostgres(pg_tmp_path / "data").superuser_password == "two"


def test_long_data_dir_uses_short_socket_dir(pg_tmp_path: Path) -> None:
    deep = pg_tmp_path / ("d" * 60) / ("e" * 60)
    with LocalPostgres(deep / "data", durable=False) as pg:
        assert len(str(pg.socket_dir)) < 100
        assert stat.S_IMODE(pg.socket_dir.stat().st_mode) == 0o700
        with psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", dbname="postgres") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)


def test_stale_pid_file_is_ignored(pg_tmp_path: Path) -> None:
    pg = LocalPostgres(pg_tmp_path / "data", durable=False).start()
    pid_file = pg.data_dir / "postmaster.pid"
    content = pid_file.read_text()
    pg.stop()
    # A crash leaves postmaster.pid behind; its pid is long gone (or reused by a non-postgres process).
    pid_file.write_text(content.replace(content.splitlines()[0], str(os.getpid()), 1))
    try:
        pg.start()
        assert pg.is_running()
    finally:
        pg.stop()


def test_non_empty_foreign_dir_is_refused(pg_tmp_path: Path) -> None:
    (pg_tmp_path / "data").mkdir()
    (pg_tmp_path / "data" / "something").write_text("x")
    with pytest.raises(LocalPostgresError, match="not empty"):
        LocalPostgres(pg_tmp_path / "data").start()


def test_ssl_needs_openssl_build(pg_tmp_path: Path) -> None:
    pg = LocalPostgres(pg_tmp_path / "data", ssl=True)
    if pg.supports_ssl():
        pytest.skip("these embedded binaries support TLS")
    with pytest.raises(LocalPostgresError, match="OpenSSL"):
        pg.start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when the tests run as root")
def test_runs_as_unprivileged_user_when_root(pg_tmp_path: Path) -> None:
    with LocalPostgres(pg_tmp_path / "data", durable=False) as pg:
        uid = os.stat(f"/proc/{_postmaster_pid(pg)}").st_uid
        assert uid != 0
        assert pg.data_dir.stat().st_uid == uid
        assert stat.S_IMODE(pg.data_dir.stat().st_mode) == 0o700


def test_system_binaries(pg15_target: TargetDatabase) -> None:
    pg = pg15_target.pg
    out = subprocess.run([str(pg.bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
    assert pg.version().split(".")[0] in out
    with psycopg.connect(pg15_target.owner_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM shop.customers").fetchone() == (1000,)


def test_major_version_mismatch_is_explained(pg_tmp_path: Path) -> None:
    bin_dir = LocalPostgres.system_bin_dir()
    if bin_dir is None:
        pytest.skip("this machine has no PostgreSQL server binaries")
    LocalPostgres(pg_tmp_path / "data", durable=False).start().stop()
    if LocalPostgres(pg_tmp_path / "x", bin_dir=bin_dir).version().startswith("18."):
        pytest.skip("the machine's PostgreSQL is 18 too")
    with pytest.raises(LocalPostgresError, match="was created by PostgreSQL 18"):
        LocalPostgres(pg_tmp_path / "data", bin_dir=bin_dir).start()
