"""Fixtures of the driver tests: what stands behind the gateway the drivers connect to.

Every driver test is written against ONE fixture, `pg_endpoint` (tests/fixtures/gateway.py): the
real gateway, as the `ci` service identity, with `host`, `port`, `dbname`, `user`, `password`,
`sslrootcert` and `env()` (the PG* variables, PGSSLMODE=verify-full).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.postgres import TargetDatabase


@pytest.fixture(scope="session")
def endpoint_target(pg_endpoint: Any, request: pytest.FixtureRequest) -> TargetDatabase:
    """The target cluster behind `pg_endpoint` (the gateway fixture fronts `target_pg`)."""
    target = getattr(pg_endpoint, "target", None)
    if target is not None:
        return target  # type: ignore[no-any-return]
    return request.getfixturevalue("target_pg")  # type: ignore[no-any-return]
