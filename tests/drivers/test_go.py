"""pgx v5 through the endpoint: TLS verify-full, binary extended protocol, CopyFrom/CopyTo, cancel
through a context deadline (program: tests/drivers/go)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.drivers.programs import (
    CHECKS,
    DRIVERS_DIR,
    ProgramRun,
    assert_check,
    assert_clean_exit,
    build,
    is_stale,
    require_tool,
    run_program,
)

pytestmark = pytest.mark.drivers

PROJECT = DRIVERS_DIR / "go"
BINARY = PROJECT / "bin" / "pgxcheck"
SOURCES = [PROJECT / "main.go", PROJECT / "queries.go", PROJECT / "go.mod", PROJECT / "go.sum"]


@pytest.fixture(scope="module")
def go_run(pg_endpoint: Any) -> ProgramRun:
    tools = require_tool("go")
    build_seconds = None
    if is_stale(BINARY, SOURCES):
        # -mod=readonly: go.sum is committed; a build never rewrites it.
        build_seconds = build([tools["go"], "build", "-mod=readonly", "-o", str(BINARY), "."], PROJECT)
    run = run_program([str(BINARY)], PROJECT, pg_endpoint)
    run.build_seconds = build_seconds
    return run


@pytest.mark.parametrize("check", CHECKS)
def test_pgx(go_run: ProgramRun, check: str) -> None:
    assert_check(go_run, check)


def test_pgx_exit_status(go_run: ProgramRun) -> None:
    assert_clean_exit(go_run)
