"""A masked session's records name the masked columns, digest the masked rows the client saw, and
never hold a clear parameter value."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_plane.pgserver import LocalPostgres
from tests.audit.conftest import AuditGateway, start_audit_gateway
from tests.fixtures.gateway import stop_gateway
from tests.fixtures.postgres import TargetDatabase
from tests.policy.conftest import PolicyGateway, apply_demo_policies


@pytest.fixture(scope="module")
def masked(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase
) -> Iterator[tuple[AuditGateway, PolicyGateway]]:
    ag = start_audit_gateway(
        pg_base_dir / "audit-masked", store_pg, target_pg, ci_policy=False, PGWARD_AUDIT_PARAMETERS="true"
    )
    try:
        apply_demo_policies(ag.gw)
        pg = PolicyGateway(ag.gw, {"ci": ag.gw.ci_token})
        pg.identity("alice", "analysts")
        yield ag, pg
    finally:
        stop_gateway(ag.gw)


def test_masked_columns_and_digest_of_the_masked_rows(masked: tuple[AuditGateway, PolicyGateway]) -> None:
    ag, pg = masked
    with psycopg.connect(pg.conninfo("alice"), password=pg.tokens["alice"], autocommit=True) as conn:
        rows = conn.execute(
            "select id, email, phone, 'mark_masked_1' as m from shop.customers where id <= 3 order by id"
        ).fetchall()
        by_param = conn.execute("select email from shop.customers where email = %s", ("nobody@example.com",))
        assert by_param.fetchall() == []
    assert all("*" in r[1] for r in rows)
    events = ag.session_events("mark_masked_1", 2)
    first = events[0]
    assert first["identity"]["username"] == "alice"
    assert first["masked_columns"] == ["email", "phone"] and first["rows"] == 3
    assert first["decision"] == "allow" and first["class"] == "read"
    # The digest is over what alice received: recompute it from the masked values she saw.
    digest = hashlib.sha256()
    for r in rows:
        body = len(r).to_bytes(2, "big")
        for value in r:
            text = str(value).encode()
            body += len(text).to_bytes(4, "big") + text
        digest.update(b"D" + (len(body) + 4).to_bytes(4, "big") + body)
    assert first["result_digest"] == digest.hexdigest()
    # Parameters of a masked session are never recorded in clear.
    assert events[1]["params"] == ["****"]
    assert "nobody@example.com" not in str(events)
