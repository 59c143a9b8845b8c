"""Demo certificates: verified by OpenSSL, by psql and by psycopg with verify-full; reused when valid."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from control_plane.demo.certs import ensure_certs
from control_plane.pgserver import LocalPostgres
from tests.fixtures.postgres import TargetDatabase


def test_files_and_extensions(tmp_path: Path) -> None:
    files = ensure_certs(tmp_path / "tls")
    assert {p.name for p in (tmp_path / "tls").iterdir()} == {"ca.crt", "ca.key", "server.crt", "server.key"}
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert 364 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366


def test_openssl_verifies_chain(tmp_path: Path) -> None:
    # openssl ships with the machine and psql comes from scripts/system-deps.sh: a missing tool fails.
    assert shutil.which("openssl"), "openssl is not installed"
    files = ensure_certs(tmp_path)
    for host_opt in (["-verify_ip", "127.0.0.1"], ["-verify_ip", "::1"], ["-verify_hostname", "localhost"]):
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(files.ca_cert), "-purpose", "sslserver", *host_opt,
             str(files.server_cert)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    wrong = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), "-verify_hostname", "example.com",
         str(files.server_cert)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0


def test_idempotent_and_renews_server_only(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ensure_certs(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # Losing the server certificate keeps the CA, so clients that trust it keep working.
    first.server_cert.unlink()
    ensure_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before["ca.crt"]
    assert first.server_cert.read_bytes() != before["server.crt"]
    # A certificate that lacks a requested name is replaced.
    ensure_certs(tmp_path, hosts=("localhost", "127.0.0.1", "::1", "db.test"))
    cert = x509.load_pem_x509_certificate(first.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "db.test" in san.get_values_for_type(x509.DNSName)


@pytest.fixture(scope="module")
def tls_server(pg_base_dir: Path) -> Iterator[LocalPostgres]:
    bin_dir = LocalPostgres.system_bin_dir()
    if bin_dir is None or not LocalPostgres.binaries_support_ssl(bin_dir):
        pytest.skip("no PostgreSQL with OpenSSL on this machine (the embedded one has no TLS)")
    base = pg_base_dir / "tls-server"
    files = ensure_certs(base / "tls")
    pg = LocalPostgres(
        base / "data", bin_dir=bin_dir, durable=False, ssl=True,
        ssl_cert=files.server_cert, ssl_key=files.server_key, ssl_ca=files.ca_cert,
    ).start()  # fmt: skip
    yield pg
    pg.stop()


def test_psycopg_verify_full(tls_server: LocalPostgres) -> None:
    for host in ("127.0.0.1", "localhost"):
        with psycopg.connect(
            host=host, port=tls_server.port, user="postgres", password=tls_server.superuser_password,
            dbname="postgres", sslmode="verify-full", sslrootcert=str(tls_server.ca_cert),
        ) as conn:  # fmt: skip
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (
                True,
            )


def test_verify_full_rejects_other_ca(tls_server: LocalPostgres, tmp_path: Path) -> None:
    other = ensure_certs(tmp_path / "other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(tls_server.dsn(sslmode="verify-full", sslrootcert=str(other.ca_cert))).close()


def test_psql_verify_full(tls_server: LocalPostgres) -> None:
    assert shutil.which("psql"), "psql is not installed (make test installs postgresql-client)"
    conninfo = (
        f"host=127.0.0.1 port={tls_server.port} dbname=postgres user=postgres "
        f"sslmode=verify-full sslrootcert={tls_server.ca_cert}"
    )
    result = subprocess.run(
        ["psql", "-X", "-qtA", conninfo, "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        capture_output=True, text=True, check=False,
        env={"PGPASSWORD": tls_server.superuser_password, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "t"


def test_generated_self_signed_ssl(pg15_target: TargetDatabase) -> None:
    if not pg15_target.ssl:
        pytest.skip("the machine's PostgreSQL has no TLS")
    with psycopg.connect(pg15_target.pg.dsn(sslmode="verify-full")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
