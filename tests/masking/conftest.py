"""Fixtures for masking tests: a gateway with the demo policies (PII of shop.customers masked) and
the clear PII values read directly from the target, to prove none of them reaches a masked client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from control_plane.pgserver import LocalPostgres
from tests.fixtures.gateway import start_gateway, stop_gateway
from tests.fixtures.postgres import TargetDatabase
from tests.policy.conftest import PolicyGateway, apply_demo_policies

PII_COLUMNS = ("email", "phone", "ssn", "card_number")


@dataclass(frozen=True)
class ClearValues:
    """Every clear value of every masked column of the demo data, by customer id."""

    rows: dict[int, dict[str, str]]

    @property
    def values(self) -> frozenset[str]:
        return frozenset(v for row in self.rows.values() for v in row.values())

    def leaks(self, texts: list[str]) -> list[str]:
        """The clear values that occur in any of `texts` (as a whole value or inside a message)."""
        found: list[str] = []
        values = self.values
        for text in texts:
            if text in values:
                found.append(text)
                continue
            if len(text) > 8:
                found.extend(v for v in values if v in text)
        return found


@pytest.fixture(scope="session")
def clear_values(target_pg: TargetDatabase) -> ClearValues:
    with psycopg.connect(target_pg.superuser_dsn) as conn:
        rows = conn.execute("select id, email, phone, ssn, card_number from shop.customers").fetchall()
    assert len(rows) >= 1000
    return ClearValues({r[0]: dict(zip(PII_COLUMNS, r[1:], strict=True)) for r in rows})


@pytest.fixture(scope="session")
def masking_gateway(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase
) -> Iterator[PolicyGateway]:
    gw = start_gateway(
        pg_base_dir / "masking-gateway",
        store_pg,
        target_pg,
        ci_policy=False,
        PGWARD_POLICY_POLL_INTERVAL="0.5",
    )
    try:
        apply_demo_policies(gw)
        pg = PolicyGateway(gw, {"ci": gw.ci_token})
        pg.identity("alice", "analysts")
        pg.identity("bob", "dba", "admins")
        yield pg
    finally:
        stop_gateway(gw)
