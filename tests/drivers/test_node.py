"""node-postgres (pg 8) and pg-copy-streams through the endpoint: TLS with the CA, named statements,
`binary: true`, COPY streams, cancel through a second client (program: tests/drivers/node)."""

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

PROJECT = DRIVERS_DIR / "node"
# npm ci rewrites node_modules/.package-lock.json: its mtime says when the install happened.
INSTALLED = PROJECT / "node_modules" / ".package-lock.json"


@pytest.fixture(scope="module")
def node_run(pg_endpoint: Any) -> ProgramRun:
    tools = require_tool("node", "npm")
    build_seconds = None
    if is_stale(INSTALLED, [PROJECT / "package.json", PROJECT / "package-lock.json"]):
        build_seconds = build([tools["npm"], "ci", "--no-audit", "--no-fund", "--loglevel=error"], PROJECT)
    run = run_program([tools["node"], "check.js"], PROJECT, pg_endpoint)
    run.build_seconds = build_seconds
    return run


@pytest.mark.parametrize("check", CHECKS)
def test_node_postgres(node_run: ProgramRun, check: str) -> None:
    assert_check(node_run, check)


def test_node_postgres_exit_status(node_run: ProgramRun) -> None:
    assert_clean_exit(node_run)
