"""The PostgreSQL client tools through the endpoint: psql (sslmode=verify-full, \\copy, \\d, a
multi-statement -c), pg_dump of the shop schema, and pgbench -S in each query mode."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from tests.drivers.programs import require_tool
from tests.fixtures.postgres import TargetDatabase

pytestmark = pytest.mark.drivers

PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def _env(ep: Any) -> dict[str, str]:
    return {**os.environ, **ep.env(), "PGCONNECT_TIMEOUT": "20"}


def psql(ep: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = require_tool("psql")["psql"]
    cmd = [exe, "-X", "-At", "-v", "ON_ERROR_STOP=1", *args]
    return subprocess.run(cmd, env=_env(ep), capture_output=True, text=True, timeout=timeout)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_psql_verify_full(pg_endpoint: Any) -> None:
    out = _ok(psql(pg_endpoint, "-c", "\\conninfo", "-c", "select count(*) from shop.customers"))
    assert "SSL connection" in out, out
    assert int(out.strip().splitlines()[-1]) >= 1000


def test_psql_multi_statement(pg_endpoint: Any) -> None:
    # One -c string = one simple Query with three statements; psql 15 prints every result.
    out = _ok(psql(pg_endpoint, "-c", "select 1; select 'two'; select count(*) >= 5000 from shop.orders"))
    assert out.split() == ["1", "two", "t"], out


def test_psql_describe(pg_endpoint: Any) -> None:
    out = _ok(psql(pg_endpoint, "-P", "tuples_only=off", "-c", "\\d shop.customers"))
    for column in ("id", "name", "email", "phone", "ssn", "card_number", "created_at"):
        assert re.search(rf"^{column}\|", out, re.M), f"{column} missing from \\d output:\n{out}"
    assert "customers_pkey" in out


def test_psql_copy(pg_endpoint: Any, tmp_path: Path) -> None:
    dump = tmp_path / "orders.tsv"
    query = "select * from shop.orders where id <= 300 order by id"
    _ok(psql(pg_endpoint, "-c", f"\\copy ({query}) to '{dump}'"))
    assert len(dump.read_text().splitlines()) == 300
    out = _ok(
        psql(
            pg_endpoint,
            "-c",
            "create temp table pgward_psql_copy (like shop.orders)",
            "-c",
            f"\\copy pgward_psql_copy from '{dump}'",
            "-c",
            "select count(*), sum(amount) = (select sum(amount) from shop.orders where id <= 300)"
            " from pgward_psql_copy",
        )
    )
    assert out.strip().splitlines()[-1] == "300|t", out


def _server_major(ep: Any) -> int:
    return int(_ok(psql(ep, "-c", "show server_version_num")).strip()) // 10000


def _pg_dump_for(major: int) -> tuple[str, int]:
    """The newest pg_dump on this machine (PATH and /usr/lib/postgresql/*/bin)."""
    candidates = [require_tool("pg_dump")["pg_dump"]]
    candidates += [str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pg_dump")]
    best: tuple[str, int] | None = None
    for exe in candidates:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        if m and (best is None or int(m.group(1)) > best[1]):
            best = (exe, int(m.group(1)))
    assert best is not None
    if best[1] < major:
        pytest.fail(
            f"pg_dump {best[1]} ({best[0]}) refuses to dump a PostgreSQL {major} server: "
            f"install postgresql-client-{major} (or newer) so the client tools match the target"
        )
    return best


def test_pg_dump_schema(pg15_endpoint: Any) -> None:
    # pg_dump refuses a server newer than itself; the machine's pg_dump is 15 (with TLS), so it
    # dumps through the gateway in front of the PostgreSQL 15 target.
    pg_endpoint = pg15_endpoint
    exe, _ = _pg_dump_for(_server_major(pg_endpoint))
    r = subprocess.run(
        [exe, "--schema=shop", "--no-owner"],
        env=_env(pg_endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "CREATE TABLE shop.customers" in out
    assert "CREATE TABLE shop.orders" in out
    m = re.search(r"^COPY shop\.customers \(([^)]*)\) FROM stdin;\n(.*?)^\\\.$", out, re.M | re.S)
    assert m, "no COPY data for shop.customers in the dump"
    assert len(m.group(2).splitlines()) >= 1000
    assert re.search(r"^COPY shop\.orders .* FROM stdin;$", out, re.M)


@pytest.fixture(scope="session")
def pgbench_tables(endpoint_target: TargetDatabase) -> None:
    """pgbench's tables, created directly on the target (pgbench -i drops and recreates tables, which the
    gateway would hold for approval) and readable by the role the endpoint connects as."""
    exe = require_tool("pgbench")["pgbench"]
    r = subprocess.run(
        [exe, "-i", "-s", "1", "-q", endpoint_target.superuser_dsn],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with endpoint_target.pg.connect(endpoint_target.database) as conn:
        for table in PGBENCH_TABLES:
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
                    sql.Identifier(table), sql.Identifier(endpoint_target.shop.role)
                )
            )


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pg_endpoint: Any, pgbench_tables: None, mode: str) -> None:
    exe = require_tool("pgbench")["pgbench"]
    r = subprocess.run(
        [exe, "-n", "-S", "-t", "200", "-M", mode],
        env=_env(pg_endpoint),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "number of transactions actually processed: 200/200" in r.stdout, r.stdout
    assert re.search(r"number of failed transactions: 0\b", r.stdout), r.stdout
    assert f"query mode: {mode}" in r.stdout
