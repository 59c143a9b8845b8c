"""The demo's `shop` database: customers with PII and their orders, generated deterministically."""

from __future__ import annotations

import datetime as dt
import random
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = [
    "CUSTOMERS",
    "DATABASE",
    "ORDERS",
    "OWNER",
    "PII_COLUMNS",
    "READER",
    "SEED",
    "ShopInfo",
    "generate_customers",
    "generate_orders",
    "load_shop",
    "luhn_valid",
]

DATABASE = "shop"
OWNER = "shop_owner"
# Read-only role the demo policies `run_as` (SET ROLE after connecting).
READER = "shop_reader"
CUSTOMERS = 1000
ORDERS = 5000
# Fixed so every demo, test and benchmark sees the same rows.
SEED = 20_240_601
PII_COLUMNS = ("email", "phone", "ssn", "card_number")
STATUSES = ("pending", "paid", "shipped", "cancelled")
_STATUS_WEIGHTS = (15, 35, 40, 10)
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

_FIRST = (
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isabel", "Jack",
    "Karen", "Liam", "Maria", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel", "Tara",
    "Umar", "Vera", "William", "Xavier", "Yara", "Zoe", "Aisha", "Bruno", "Chen", "Diego",
    "Elena", "Farah", "Giulia", "Hiro", "Ines", "Jonas", "Kwame", "Lucia", "Mateo", "Nadia",
)  # fmt: skip
_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Nguyen", "Hill",
)  # fmt: skip
# Reserved for documentation (RFC 2606), so no demo email can ever reach a real mailbox.
_DOMAINS = ("example.com", "example.net", "example.org")
_AREA_CODES = ("212", "310", "312", "415", "512", "617", "646", "702", "206", "305", "404", "503")

_DDL = """
CREATE SCHEMA shop AUTHORIZATION {owner};
CREATE TABLE shop.customers (
    id serial PRIMARY KEY,
    name text,
    email text,
    phone text,
    ssn text,
    card_number text,
    created_at timestamptz
);
CREATE TABLE shop.orders (
    id serial PRIMARY KEY,
    customer_id int REFERENCES shop.customers,
    amount numeric(10,2),
    status text,
    created_at timestamptz
);
CREATE INDEX orders_customer_id_idx ON shop.orders (customer_id);
"""


@dataclass(frozen=True)
class ShopInfo:
    """Where the demo data lives and the credential pgward stores for it (never the superuser's)."""

    role: str
    password: str
    database: str = DATABASE

    def __repr__(self) -> str:
        return f"ShopInfo(role={self.role!r}, password=<hidden>, database={self.database!r})"


def luhn_valid(number: str) -> bool:
    """True when the digits pass the Luhn check (as every real payment card number does)."""
    if not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _luhn_complete(prefix: str) -> str:
    """Append the check digit that makes `prefix` + digit Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(prefix + digit):
            return prefix + digit
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


def _card_number(rng: random.Random) -> str:
    # Visa (4…) or Mastercard (51-55…), 16 digits.
    prefix = "4" if rng.random() < 0.6 else str(rng.randint(51, 55))
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(15 - len(prefix)))
    return _luhn_complete(body)


def _ssn(rng: random.Random) -> str:
    # Area numbers 000, 666 and 900-999 are never issued; group 00 and serial 0000 neither.
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _phone(rng: random.Random) -> str:
    # 555-01xx is the range set aside for fiction, so the numbers look real but reach nobody.
    return f"({rng.choice(_AREA_CODES)}) 555-01{rng.randint(0, 99):02d}"


def generate_customers(count: int = CUSTOMERS, seed: int = SEED) -> list[tuple[Any, ...]]:
    """Rows (id, name, email, phone, ssn, card_number, created_at); the same for the same arguments."""
    rng = random.Random(seed)  # noqa: S311 (reproducible fake data, not secrets)
    rows: list[tuple[Any, ...]] = []
    for cid in range(1, count + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first.lower()}.{last.lower()}{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}"
        created = _EPOCH + dt.timedelta(seconds=rng.randint(0, 365 * 24 * 3600))
        rows.append((cid, f"{first} {last}", email, _phone(rng), _ssn(rng), _card_number(rng), created))
    return rows


def generate_orders(
    customers: list[tuple[Any, ...]], count: int = ORDERS, seed: int = SEED
) -> list[tuple[Any, ...]]:
    """Rows (id, customer_id, amount, status, created_at), each after its customer was created."""
    rng = random.Random(seed + 1)  # noqa: S311 (reproducible fake data, not secrets)
    horizon = _EPOCH + dt.timedelta(days=730)
    rows: list[tuple[Any, ...]] = []
    for oid in range(1, count + 1):
        customer = rng.choice(customers)
        since: dt.datetime = customer[6]
        created = since + dt.timedelta(seconds=rng.randint(0, int((horizon - since).total_seconds())))
        amount = Decimal(rng.randint(199, 99_999)).scaleb(-2)  # exact cents, always two decimals
        status = rng.choices(STATUSES, weights=_STATUS_WEIGHTS)[0]
        rows.append((oid, customer[0], amount, status, created))
    return rows


def _with_database(dsn: str, database: str) -> str:
    return make_conninfo(dsn, dbname=database)


def _ensure_role(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    verb = "ALTER" if exists else "CREATE"
    # The server hashes the password with SCRAM-SHA-256 (password_encryption); set it explicitly since
    # an older cluster may default to md5.
    conn.execute("SET password_encryption = 'scram-sha-256'")
    conn.execute(
        sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
        )
    )


def load_shop(
    dsn_superuser: str,
    *,
    password: str | None = None,
    database: str = DATABASE,
    role: str = OWNER,
    customers: int = CUSTOMERS,
    orders: int = ORDERS,
) -> ShopInfo:
    """Create the role, the database and the `shop` schema with its data, unless already there.

    Idempotent: an existing `shop` schema is left as it is (a demo user's changes survive a restart);
    the role's password is set to `password` (a new random one when None) on every call, and returned.
    `dsn_superuser` is any libpq DSN or URI of a superuser on the target cluster.
    """
    password = password or secrets.token_urlsafe(24)
    with psycopg.connect(dsn_superuser, autocommit=True) as conn:
        _ensure_role(conn, role, password)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )

    with psycopg.connect(_with_database(dsn_superuser, database), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'shop'").fetchone():
            _ensure_reader(conn, role)
            return ShopInfo(role=role, password=password, database=database)
        # One transaction: a failed load leaves no half-filled schema behind, so the next call retries.
        with conn.transaction():
            # As the owner, so every object (tables, sequences, index) belongs to it.
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL(_DDL).format(owner=sql.Identifier(role)))
            customer_rows = generate_customers(customers)
            order_rows = generate_orders(customer_rows, orders)
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY shop.customers (id, name, email, phone, ssn, card_number, created_at) FROM STDIN"
                ) as copy:
                    for row in customer_rows:
                        copy.write_row(row)
                with cur.copy(
                    "COPY shop.orders (id, customer_id, amount, status, created_at) FROM STDIN"
                ) as copy:
                    for row in order_rows:
                        copy.write_row(row)
                # Ids were given explicitly: move the sequences past them so INSERTs keep working.
                cur.execute("SELECT setval(pg_get_serial_sequence('shop.customers', 'id'), %s)", [customers])
                cur.execute("SELECT setval(pg_get_serial_sequence('shop.orders', 'id'), %s)", [orders])
                cur.execute("COMMENT ON SCHEMA shop IS 'pgward demo data (fake PII, generated)'")
            conn.execute("ANALYZE shop.customers")
            conn.execute("ANALYZE shop.orders")
        _ensure_reader(conn, role)
    return ShopInfo(role=role, password=password, database=database)


def _ensure_reader(conn: psycopg.Connection[Any], owner: str) -> None:
    """`shop_reader` (NOLOGIN, SELECT on shop.*), granted to the owner so policies can `run_as` it."""
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(READER)))
    reader, owner_id = sql.Identifier(READER), sql.Identifier(owner)
    for statement in (
        "GRANT USAGE ON SCHEMA shop TO {reader}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {reader}",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA shop TO {reader}",
        # Tables the owner adds later are readable too.
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA shop GRANT SELECT ON TABLES TO {reader}",
        "GRANT {reader} TO {owner}",
    ):
        conn.execute(sql.SQL(statement).format(reader=reader, owner=owner_id))
