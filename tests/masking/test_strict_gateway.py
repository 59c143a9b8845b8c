"""Strict masking end to end through a real `pgward serve` and real PostgreSQL: statements are rewritten
so that predicates, joins and functions see masked values. `sam` (group strict-analysts) has email and
phone masked strictly, ssn (hash) and card_number (last4) masked the ordinary way; `alice` (demo
analysts) has all four masked the ordinary way."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.fixtures.gateway import PGWARD
from tests.fixtures.postgres import TargetDatabase
from tests.gateway.test_decisions import proxy_metric
from tests.masking.conftest import ClearValues
from tests.policy.conftest import PolicyGateway

STRICT_POLICY = """
kind: Policy
name: strict-analysts
subjects:
  groups: [strict-analysts]
connections: [shop]
rules:
  - allow: [read, write]
    tables: ["shop.*"]
masking:
  - columns: ["shop.customers.email"]
    function: email
    strict: true
  - columns: ["shop.customers.phone"]
    function: partial
    last: 4
    strict: true
  - columns: ["shop.customers.ssn"]
    function: hash
  - columns: ["shop.customers.card_number"]
    function: last4
"""


@pytest.fixture(scope="module")
def strict_gateway(masking_gateway: PolicyGateway, tmp_path_factory: pytest.TempPathFactory) -> PolicyGateway:
    path: Path = tmp_path_factory.mktemp("strict") / "strict.yaml"
    path.write_text(STRICT_POLICY)
    gw = masking_gateway.gw
    r = subprocess.run(
        [*PGWARD, "apply", "-f", str(path), "--api-url", gw.api_url, "--token", gw.admin_token],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    masking_gateway.identity("sam", "strict-analysts")
    return masking_gateway


def connect(pg: PolicyGateway, name: str) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.conninfo(name), password=pg.tokens[name], autocommit=True)


@pytest.fixture
def sam(strict_gateway: PolicyGateway) -> Iterator[psycopg.Connection[Any]]:
    with connect(strict_gateway, "sam") as conn:
        yield conn


@pytest.fixture
def alice(strict_gateway: PolicyGateway) -> Iterator[psycopg.Connection[Any]]:
    with connect(strict_gateway, "alice") as conn:
        yield conn


def one(conn: psycopg.Connection[Any], sql: str, params: Any = None, **kw: Any) -> Any:
    row = conn.execute(sql, params, **kw).fetchone()
    assert row is not None
    return row[0]


def flat(rows: list[tuple[Any, ...]]) -> list[str]:
    return [str(v) for row in rows for v in row if v is not None]


def test_where_sees_masked_values(
    sam: psycopg.Connection[Any], alice: psycopg.Connection[Any], clear_values: ClearValues
) -> None:
    real = clear_values.rows[1]
    count = "select count(*) from shop.customers where email = '{}'"
    # Without strict masking the predicate sees the clear value: existence leaks.
    assert one(alice, count.format(real["email"])) == 1
    assert one(sam, count.format(real["email"])) == 0
    # A prefix search sees masked values: every masked email starts with ****.
    first = real["email"][0]
    assert one(alice, f"select count(*) from shop.customers where email like '{first}%'") > 0
    assert one(sam, f"select count(*) from shop.customers where email like '{first}%'") == 0
    total = len(clear_values.rows)
    assert one(sam, "select count(*) from shop.customers where email like '****@%'") == total
    assert one(sam, f"select count(*) from shop.customers where phone = '{real['phone']}'") == 0
    masked = one(sam, "select email from shop.customers where id = 1")
    assert one(sam, f"select count(*) from shop.customers where email = '{masked}' and id = 1") == 1
    # ORDER BY and GROUP BY see masked values too.
    groups = sam.execute("select email, count(*) from shop.customers group by email").fetchall()
    assert all(e.startswith("****@") for e, _ in groups) and sum(n for _, n in groups) == total


def test_sql_masks_equal_the_data_planes(
    sam: psycopg.Connection[Any], alice: psycopg.Connection[Any], clear_values: ClearValues
) -> None:
    """email and phone computed by the database (sam) equal the data plane's masks (alice); ssn and
    card_number are masked by the data plane in both sessions, unchanged by the rewrite."""
    select = "select id, email, phone, ssn, card_number, name from shop.customers order by id"
    strict = sam.execute(select).fetchall()
    plain = alice.execute(select).fetchall()
    assert strict == plain
    assert len(strict) == len(clear_values.rows)
    assert not clear_values.leaks(flat(strict))
    with sam.cursor(binary=True) as cur:
        assert cur.execute(select).fetchall() == strict


def test_functions_compute_on_masked_values(sam: psycopg.Connection[Any], clear_values: ClearValues) -> None:
    rows = sam.execute(
        "select id, upper(email), length(phone), split_part(email, '@', 1), email::varchar(8), "
        "left(phone, 3) || '!' from shop.customers order by id limit 200"
    ).fetchall()
    for cid, up, n, local, short, head in rows:
        original = clear_values.rows[cid]
        assert up == "****@" + original["email"].split("@")[1].upper()
        assert n == len(original["phone"])
        assert local == "****"
        assert short == ("****@" + original["email"].split("@")[1])[:8]
        assert head == "***!"
    assert not clear_values.leaks(flat(rows))
    # Non-strict masked columns keep ordinary leak analysis.
    with pytest.raises(errors.InsufficientPrivilege, match="ssn"):
        sam.execute("select lower(ssn) from shop.customers")


def test_joins_on_masked_columns(sam: psycopg.Connection[Any], clear_values: ClearValues) -> None:
    # Clear emails are unique: a self-join on them pairs each row with itself only. Masked emails
    # keep only the domain, so the join pairs every two customers of a domain.
    pairs = one(sam, "select count(*) from shop.customers a join shop.customers b on a.email = b.email")
    domains: dict[str, int] = {}
    for row in clear_values.rows.values():
        domain = row["email"].split("@")[1]
        domains[domain] = domains.get(domain, 0) + 1
    assert pairs == sum(n * n for n in domains.values())
    assert pairs > len(clear_values.rows)
    # Joining a masked column to a clear constant set finds nothing.
    emails = ", ".join(f"('{r['email']}')" for r in list(clear_values.rows.values())[:20])
    assert (
        one(sam, f"select count(*) from shop.customers c join (values {emails}) v(e) on v.e = c.email") == 0
    )
    # A join with another table and a sub-select.
    n = one(
        sam,
        "select count(*) from shop.orders o join shop.customers c on c.id = o.customer_id "
        "where c.email in (select email from shop.customers where phone like '%0')",
    )
    assert n > 0


def test_extended_protocol_parameters_and_prepared_statements(
    strict_gateway: PolicyGateway, sam: psycopg.Connection[Any], clear_values: ClearValues
) -> None:
    real = clear_values.rows[2]["email"]
    sql = "select count(*) from shop.customers where email = %s"
    for _ in range(4):  # psycopg prepares server-side from the third run on
        assert one(sam, sql, [real], prepare=True) == 0
    masked = one(sam, "select email from shop.customers where id = %s", [2], prepare=True)
    assert masked != real and masked.startswith("****@")
    assert one(sam, "select count(*) from shop.customers where email = %s and id = %s", [masked, 2]) == 1
    # SQL-level PREPARE / EXECUTE: the prepared text is the rewritten one.
    sam.execute("prepare q(text) as select count(*) from shop.customers where email = $1")
    assert one(sam, f"execute q('{real}')") == 0
    assert one(sam, f"execute q('{masked}')") >= 1
    gw = strict_gateway.gw

    async def run() -> tuple[int, str]:
        conn = await asyncpg.connect(
            host=gw.host,
            port=gw.port,
            user="sam",
            password=strict_gateway.tokens["sam"],
            database="shop",
            ssl=ssl.create_default_context(cafile=str(gw.sslrootcert)),
        )
        try:
            stmt = await conn.prepare("select count(*) from shop.customers where email = $1")
            found = await stmt.fetchval(real)
            row = await conn.fetchrow("select email, phone from shop.customers where id = $1", 3)
            assert row is not None
            return int(found), str(row["email"]) + str(row["phone"])
        finally:
            await conn.close()

    found, values = asyncio.run(run())
    assert found == 0
    assert not clear_values.leaks([values])


def test_writes_reach_the_real_table_and_see_masked_values(
    sam: psycopg.Connection[Any], clear_values: ClearValues
) -> None:
    real = clear_values.rows[4]
    try:
        sam.execute("begin")
        # DELETE … WHERE on a strict column sees masked values: the clear one matches nothing.
        assert sam.execute(f"delete from shop.customers where email = '{real['email']}'").rowcount == 0
        cur = sam.execute(
            "update shop.customers set name = name where id = 4 and email like '****@%' returning email, ssn"
        )
        rows = cur.fetchall()
        assert len(rows) == 1 and not clear_values.leaks(flat(rows))
        # Writing a strict column stores the new value in the real table.
        sam.execute("update shop.customers set email = 'new@example.org' where id = 4")
        assert one(sam, "select email from shop.customers where id = 4") == "****@example.org"
        with pytest.raises(errors.InsufficientPrivilege, match="whole-row"):
            sam.execute("delete from shop.customers c where id = 4 and c = c")
    finally:
        sam.execute("rollback")


def test_repeated_statements_are_cached(strict_gateway: PolicyGateway, sam: psycopg.Connection[Any]) -> None:
    sql = "select count(*) from shop.customers where email like '****@%' and id < 100"
    one(sam, sql)
    before = proxy_metric(strict_gateway.gw, "python_decisions")
    rewrites = proxy_metric(strict_gateway.gw, "rewrites")
    for _ in range(5):
        assert one(sam, sql) == 99
    assert proxy_metric(strict_gateway.gw, "python_decisions") == before
    # Each repeat still went upstream rewritten (from the cache).
    assert proxy_metric(strict_gateway.gw, "rewrites") == rewrites + 5


def test_views_over_strict_columns(
    strict_gateway: PolicyGateway,
    target_pg: TargetDatabase,
    clear_values: ClearValues,
) -> None:
    """A view that shows a strict column is rewritten like a table: its predicates see masked values."""
    with connect(strict_gateway, "bob") as bob:
        # DDL through pgward drops the catalog snapshot, so the next session sees the view.
        bob.execute(
            "create or replace view shop.strict_contacts as "
            "select c.id, c.email, c.name from shop.customers c"
        )
    try:
        with connect(strict_gateway, "sam") as sam:
            real = clear_values.rows[5]["email"]
            assert one(sam, f"select count(*) from shop.strict_contacts where email = '{real}'") == 0
            rows = sam.execute(
                "select v.id, v.email, upper(v.email) from shop.strict_contacts v "
                "join shop.customers c on c.email = v.email and c.id = v.id order by v.id"
            ).fetchall()
            assert len(rows) == len(clear_values.rows)
            assert all(e.startswith("****@") and u == e.upper() for _, e, u in rows)
            assert not clear_values.leaks(flat(rows))
    finally:
        with psycopg.connect(target_pg.superuser_dsn, autocommit=True) as conn:
            conn.execute("drop view if exists shop.strict_contacts")


def test_cte_lateral_and_set_operations(sam: psycopg.Connection[Any], clear_values: ClearValues) -> None:
    real = clear_values.rows[6]
    rows = sam.execute(
        "with customers as (select id, email from shop.customers where email like '%@%') "
        "select c.id, x.e, length(x.e) from customers c, lateral (select c.email as e) x "
        f"where x.e <> '{real['email']}' "
        "union all select id, phone, 0 from shop.customers where phone = "
        f"'{real['phone']}' order by 1"
    ).fetchall()
    assert len(rows) == len(clear_values.rows)
    assert all(e.startswith("****@") for _, e, _ in rows)
    assert not clear_values.leaks(flat(rows))
