"""The shop data: counts, determinism, realistic PII formats, Luhn-valid cards, ownership, idempotence."""

from __future__ import annotations

import re

import psycopg
import pytest

from control_plane.demo import shop
from control_plane.demo.shop import generate_customers, generate_orders, load_shop, luhn_valid
from tests.fixtures.postgres import TargetDatabase

_DIGEST = "SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM shop.{} t"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("4111-1111")


def test_generation_is_deterministic() -> None:
    customers = generate_customers()
    assert customers == generate_customers()
    assert generate_orders(customers) == generate_orders(generate_customers())
    assert generate_customers(seed=1) != customers


def test_generated_values_look_real() -> None:
    customers = generate_customers()
    assert len(customers) == shop.CUSTOMERS >= 1000
    for _id, name, email, phone, ssn, card, created in customers:
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", name)
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.(com|net|org)", email)
        assert re.fullmatch(r"\(\d{3}\) 555-01\d\d", phone)
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", ssn)
        assert not ssn.startswith(("000", "666", "9")) and "-00-" not in ssn and not ssn.endswith("0000")
        assert len(card) == 16 and card[0] in "45" and luhn_valid(card)
        assert created.tzinfo is not None
    orders = generate_orders(customers)
    assert len(orders) == shop.ORDERS >= 5000
    created_by_id = {c[0]: c[6] for c in customers}
    for _id, customer_id, amount, status, created in orders:
        assert status in shop.STATUSES
        assert 0 < amount < 10_000 and amount.as_tuple().exponent == -2
        assert created >= created_by_id[customer_id]


def test_loaded_counts_and_pii(target_pg: TargetDatabase) -> None:
    with psycopg.connect(target_pg.owner_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM shop.customers").fetchone() == (shop.CUSTOMERS,)
        assert conn.execute("SELECT count(*) FROM shop.orders").fetchone() == (shop.ORDERS,)
        # Every customer has all four PII values.
        missing = conn.execute(
            "SELECT count(*) FROM shop.customers WHERE email IS NULL OR phone IS NULL OR ssn IS NULL"
            " OR card_number IS NULL OR '' IN (email, phone, ssn, card_number)"
        ).fetchone()
        assert missing == (0,)
        cards = [r[0] for r in conn.execute("SELECT card_number FROM shop.customers")]
        assert all(luhn_valid(c) for c in cards)
        orphans = conn.execute(
            "SELECT count(*) FROM shop.orders o"
            " LEFT JOIN shop.customers c ON c.id = o.customer_id WHERE c.id IS NULL"
        ).fetchone()
        assert orphans == (0,)


def test_exact_column_types(target_pg: TargetDatabase) -> None:
    with psycopg.connect(target_pg.owner_dsn) as conn:
        cols = conn.execute(
            "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, column_default"
            " FROM information_schema.columns WHERE table_schema = 'shop'"
            " ORDER BY table_name, ordinal_position"
        ).fetchall()
    got = {(t, c): (d, p, s) for t, c, d, p, s, _ in cols}
    assert [c for t, c in got if t == "customers"] == [
        "id", "name", "email", "phone", "ssn", "card_number", "created_at"
    ]  # fmt: skip
    assert [c for t, c in got if t == "orders"] == ["id", "customer_id", "amount", "status", "created_at"]
    assert got[("orders", "amount")] == ("numeric", 10, 2)
    assert got[("customers", "created_at")][0] == "timestamp with time zone"
    assert all(d.startswith("nextval(") for t, c, *_, d in cols if c == "id")


def test_owner_role_not_superuser_and_scram(target_pg: TargetDatabase) -> None:
    with psycopg.connect(target_pg.superuser_dsn) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword LIKE 'SCRAM-SHA-256$%'"
            " FROM pg_authid WHERE rolname = 'shop_owner'"
        ).fetchone()
        assert role == (False, False, False, True)
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'shop'::regnamespace"
        ).fetchall()
        assert owners == [("shop_owner",)]
        assert conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'shop'"
        ).fetchone() == ("shop_owner",)
    # The owner can write (the sequences were moved past the loaded ids).
    with psycopg.connect(target_pg.owner_dsn) as conn:
        row = conn.execute("INSERT INTO shop.customers (name) VALUES ('temp') RETURNING id").fetchone()
        assert row is not None and row[0] > shop.CUSTOMERS
        conn.rollback()


def test_load_is_idempotent_and_deterministic(target_pg: TargetDatabase) -> None:
    with psycopg.connect(target_pg.superuser_dsn) as conn:
        digests = [conn.execute(_DIGEST.format(t)).fetchone() for t in ("customers", "orders")]
    # A second load into the same database changes nothing but the password it is given.
    info = load_shop(target_pg.pg.dsn(), password=target_pg.shop.password)
    assert info == target_pg.shop
    # A load into another database yields the very same rows.
    load_shop(target_pg.pg.dsn(), password=target_pg.shop.password, database="shop_again")
    with (
        psycopg.connect(target_pg.pg.dsn("shop_again")) as again,
        psycopg.connect(target_pg.superuser_dsn) as conn,
    ):
        for table, digest in zip(("customers", "orders"), digests, strict=True):
            assert conn.execute(_DIGEST.format(table)).fetchone() == digest
            assert again.execute(_DIGEST.format(table)).fetchone() == digest
        assert conn.execute("SELECT count(*) FROM shop.customers").fetchone() == (shop.CUSTOMERS,)


def test_password_is_reset_on_load(target_pg: TargetDatabase) -> None:
    info = load_shop(target_pg.pg.dsn(), password="temporary-password")
    try:
        psycopg.connect(target_pg.pg.dsn("shop", info.role, "temporary-password")).close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(target_pg.owner_dsn).close()
    finally:
        load_shop(target_pg.pg.dsn(), password=target_pg.shop.password)
    assert "temporary" not in repr(info)
