"""pgjdbc (42.x) through the endpoint: TLS verify-full, server-side prepared statements with binary
transfer, CopyManager, Statement.cancel() (program: tests/drivers/java)."""

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

PROJECT = DRIVERS_DIR / "java"
JAR = PROJECT / "target" / "pgjdbc-check.jar"


@pytest.fixture(scope="module")
def java_run(pg_endpoint: Any) -> ProgramRun:
    tools = require_tool("mvn", "java")
    build_seconds = None
    if is_stale(JAR, [PROJECT / "pom.xml", PROJECT / "src"]):
        build_seconds = build([tools["mvn"], "-q", "-B", "package"], PROJECT)
    run = run_program([tools["java"], "-jar", str(JAR)], PROJECT, pg_endpoint)
    run.build_seconds = build_seconds
    return run


@pytest.mark.parametrize("check", CHECKS)
def test_pgjdbc(java_run: ProgramRun, check: str) -> None:
    assert_check(java_run, check)


def test_pgjdbc_exit_status(java_run: ProgramRun) -> None:
    assert_clean_exit(java_run)
