"""COPY … TO STDOUT through a real `pgward serve` as a masked identity: text, CSV and binary output is
masked like SELECT results, compared with the clear values read directly from the target."""

from __future__ import annotations

import csv
import io
import os
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors

from tests.fixtures.postgres import TargetDatabase
from tests.gateway.wire import message, query
from tests.masking.conftest import PII_COLUMNS, ClearValues
from tests.masking.test_gateway import _login, connect
from tests.policy.conftest import DEMO_POLICIES, PolicyGateway

COLUMNS = "id, name, email, phone, ssn, card_number"
MASKED_SELECT = f"select {COLUMNS} from shop.customers order by id"


@pytest.fixture
def alice(masking_gateway: PolicyGateway) -> Iterator[psycopg.Connection[Any]]:
    with connect(masking_gateway, "alice") as conn:
        yield conn


@pytest.fixture
def masked_rows(alice: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    """What alice's SELECT shows (masked by origin in DataRows), by id, as text."""
    rows = alice.execute(MASKED_SELECT).fetchall()
    return {r[0]: tuple(str(v) if v is not None else None for v in r) for r in rows}


def copy_bytes(conn: psycopg.Connection[Any], sql: str) -> bytes:
    with conn.cursor() as cur, cur.copy(sql) as copy:
        return b"".join(bytes(block) for block in copy)


def text_rows(data: bytes) -> list[tuple[str | None, ...]]:
    """Decode COPY text format (default delimiter and NULL) into fields."""
    out: list[tuple[str | None, ...]] = []
    escapes = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\", "b": "\b", "f": "\f", "v": "\v"}
    for line in data.decode().split("\n")[:-1]:
        fields: list[str | None] = []
        for raw in line.split("\t"):
            if raw == "\\N":
                fields.append(None)
                continue
            value, i = [], 0
            while i < len(raw):
                if raw[i] == "\\" and i + 1 < len(raw):
                    value.append(escapes.get(raw[i + 1], raw[i + 1]))
                    i += 2
                else:
                    value.append(raw[i])
                    i += 1
            fields.append("".join(value))
        out.append(tuple(fields))
    return out


def assert_copy_masked(
    rows: list[tuple[Any, ...]], masked: dict[int, tuple[Any, ...]], clear: ClearValues
) -> None:
    """COPY rows (id, name, email, phone, ssn, card_number) are exactly what SELECT showed, and no
    clear value appears."""
    assert len(rows) == len(clear.rows)
    values = [str(v) for row in rows for v in row if v is not None]
    assert not clear.leaks(values), clear.leaks(values)[:3]
    for row in rows:
        cid = int(row[0])
        assert tuple(str(v) if v is not None else None for v in row) == masked[cid]
        original = clear.rows[cid]
        for name, value in zip(PII_COLUMNS, row[2:], strict=True):
            assert value != original[name]


def test_text_format_is_masked(
    alice: psycopg.Connection[Any], masked_rows: dict[int, tuple[Any, ...]], clear_values: ClearValues
) -> None:
    data = copy_bytes(alice, f"copy shop.customers ({COLUMNS}) to stdout")
    assert_copy_masked(text_rows(data), masked_rows, clear_values)
    # The whole table, default column list (created_at too), the same masked values.
    whole = text_rows(copy_bytes(alice, "copy shop.customers to stdout"))
    assert [r[:6] for r in whole] == [r[:6] for r in text_rows(data)]
    assert all(len(r) == 7 for r in whole)


def test_csv_with_header_delimiter_and_quote(
    alice: psycopg.Connection[Any], masked_rows: dict[int, tuple[Any, ...]], clear_values: ClearValues
) -> None:
    data = copy_bytes(
        alice,
        f"copy shop.customers ({COLUMNS}) to stdout with (format csv, header, delimiter ';', quote '''')",
    ).decode()
    reader = csv.reader(io.StringIO(data, newline=""), delimiter=";", quotechar="'")
    header, *rows = list(reader)
    assert header == [c.strip() for c in COLUMNS.split(",")]
    assert_copy_masked([tuple(r) for r in rows], masked_rows, clear_values)
    # FORCE_QUOTE keeps masked values quoted, and a NULL string that looks like data stays NULL.
    forced = copy_bytes(
        alice,
        "copy (select id, email from shop.customers order by id limit 3) to stdout "
        "(format csv, force_quote *)",
    ).decode()
    for line in forced.splitlines():
        cid, email = line.split(",")
        assert cid.startswith('"') and email.startswith('"****@')


def test_binary_format_decodes_masked(
    alice: psycopg.Connection[Any], masked_rows: dict[int, tuple[Any, ...]], clear_values: ClearValues
) -> None:
    with alice.cursor() as cur:
        with cur.copy(f"copy shop.customers ({COLUMNS}) to stdout (format binary)") as copy:
            copy.set_types(["int4", "text", "text", "text", "text", "text"])
            rows = list(copy.rows())
    assert_copy_masked(rows, masked_rows, clear_values)


def test_copy_of_a_query(
    alice: psycopg.Connection[Any], masked_rows: dict[int, tuple[Any, ...]], clear_values: ClearValues
) -> None:
    data = copy_bytes(
        alice,
        "copy (select c.id, c.name, c.email, c.phone, c.ssn, c.card_number from shop.customers c "
        "where c.id in (select customer_id from shop.orders) or true order by c.id) to stdout",
    )
    assert_copy_masked(text_rows(data), masked_rows, clear_values)
    # Through a CTE and `*` over the table itself: positions are known, values masked.
    star = text_rows(
        copy_bytes(
            alice, "copy (with w as (select * from shop.customers) select * from shop.customers) to stdout"
        )
    )
    assert not clear_values.leaks([v for r in star for v in r if v is not None])


def test_bob_is_exempt(masking_gateway: PolicyGateway, clear_values: ClearValues) -> None:
    with connect(masking_gateway, "bob") as bob:
        rows = text_rows(
            copy_bytes(bob, "copy shop.customers (id, email, phone, ssn, card_number) to stdout")
        )
    assert {int(r[0]): dict(zip(PII_COLUMNS, r[1:], strict=True)) for r in rows} == clear_values.rows


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("copy (select lower(email) from shop.customers) to stdout", "lower()"),
        ("copy (select * from shop.customers join shop.orders using (id)) to stdout", "position"),
        ("copy shop.customers to '/tmp/pgward-copy'", "file"),
        ("copy shop.customers to stdout (format csv, encoding 'SJIS')", "encoding"),
    ],
)
def test_unmaskable_copies_are_refused(alice: psycopg.Connection[Any], sql: str, says: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as info:
        copy_bytes(alice, sql)
    assert info.value.diag.sqlstate == "42501"
    assert says in str(info.value)
    assert alice.execute("select count(*) from shop.customers").fetchone() == (1000,)


def test_copy_through_the_extended_protocol_is_refused(
    masking_gateway: PolicyGateway, clear_values: ClearValues
) -> None:
    """Drivers send COPY as a simple query; Parse/Bind/Execute of one is refused, not relayed."""
    w = _login(masking_gateway, "alice")
    try:
        for sql in ["copy shop.customers to stdout", "copy shop.orders to stdout"]:
            w.send(
                message(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))
                + message(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
                + message(b"E", b"\0" + struct.pack("!i", 0))
                + message(b"S", b"")
            )
            msgs = w.read_until(b"Z")
            errors_seen = [m.fields() for m in msgs if m.tag == b"E"]
            assert [e["C"] for e in errors_seen] == ["42501"], [m.tag for m in msgs]
            assert "extended query protocol" in errors_seen[0]["M"]
            assert not any(m.tag in (b"H", b"d") for m in msgs)
        # The session goes on; the same COPY as a simple query is masked.
        w.send(query("copy shop.customers (email) to stdout"))
        msgs = w.read_until(b"Z")
        data = [m.body.decode() for m in msgs if m.tag == b"d"]
        assert len(data) == 1000 and not clear_values.leaks(data)
    finally:
        w.close()


def test_psql_copy(masking_gateway: PolicyGateway, clear_values: ClearValues) -> None:
    r = masking_gateway.gw.psql(
        "\\copy shop.customers to stdout with csv",
        password=masking_gateway.tokens["alice"],
        conninfo=masking_gateway.conninfo("alice"),
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert len(rows) == len(clear_values.rows)
    assert not clear_values.leaks([v for row in rows for v in row])
    for row in rows:
        assert row[2].startswith("****@")


def test_several_copies_in_one_query(masking_gateway: PolicyGateway, clear_values: ClearValues) -> None:
    r = masking_gateway.gw.psql(
        "copy shop.orders (id) to stdout; copy shop.customers (id, ssn) to stdout; "
        "copy (select email from shop.customers) to stdout (format csv)",
        password=masking_gateway.tokens["alice"],
        conninfo=masking_gateway.conninfo("alice"),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) >= 5000 + 2000
    assert not clear_values.leaks(lines)
    assert sum(line.startswith("****@") for line in lines) == 1000


def test_pg_dump_data_only_is_masked(masking_gateway: PolicyGateway, pg15_target: TargetDatabase) -> None:
    """pg_dump --data-only as alice. The machine's pg_dump is 15 and refuses a newer server, so the
    gateway fronts the PostgreSQL 15 target with the demo's analysts policy (masking included)."""
    gw = masking_gateway.gw
    gw.put_connection(
        "shop15",
        host="127.0.0.1",
        port=pg15_target.port,
        database=pg15_target.database,
        username=pg15_target.shop.role,
        password=pg15_target.shop.password,
        tls_mode="disable",
    )
    document = yaml.safe_load((DEMO_POLICIES / "analysts.yaml").read_text())
    document.update(name="analysts-read-shop15", connections=["shop15"])
    gw.put_policy(document)
    with psycopg.connect(pg15_target.superuser_dsn) as direct:
        clear = direct.execute("select id, email, phone, ssn, card_number from shop.customers").fetchall()
    clear_values = ClearValues({r[0]: dict(zip(PII_COLUMNS, r[1:], strict=True)) for r in clear})
    try:
        env = {**os.environ, "PGPASSWORD": masking_gateway.tokens["alice"]}
        deadline = time.monotonic() + 30
        while True:  # the new policy reaches the gateway within its poll interval
            r = subprocess.run(
                [
                    "pg_dump",
                    "--data-only",
                    "-t",
                    "shop.customers",
                    masking_gateway.conninfo("alice", dbname="shop15"),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if r.returncode == 0 or time.monotonic() > deadline or "no pgward policy" not in r.stderr:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stderr
        m = re.search(r"^COPY shop\.customers \(([^)]*)\) FROM stdin;\n(.*?)^\\\.$", r.stdout, re.M | re.S)
        assert m, r.stdout[:2000]
        columns = [c.strip() for c in m.group(1).split(",")]
        rows = text_rows(m.group(2).encode())
        assert len(rows) == len(clear_values.rows)
        assert not clear_values.leaks([v for row in rows for v in row if v is not None])
        email = columns.index("email")
        assert all((row[email] or "").startswith("****@") for row in rows)
    finally:
        gw.delete_policy("analysts-read-shop15")


def test_binary_copy_of_non_text_columns_gets_valid_typed_values(masking_gateway: PolicyGateway) -> None:
    """Masked numbers, timestamps and NULLs in binary COPY decode as their types, and equal what
    SELECT shows through the same gateway."""
    gw = masking_gateway.gw
    gw.put_policy(
        {
            "kind": "Policy",
            "name": "analysts-orders-typed",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop"],
            "rules": [{"allow": ["read", "copy_out"], "tables": ["shop.*"]}],
            "masking": [
                {"columns": ["shop.orders.amount"], "function": "email"},
                {"columns": ["shop.orders.created_at"], "function": "partial", "last": 2},
                {"columns": ["shop.orders.customer_id"], "function": "redact"},
            ],
        }
    )
    columns = "id, customer_id, amount, status, created_at"
    try:
        deadline = time.monotonic() + 30
        while True:  # the new policy reaches the gateway within its poll interval
            with connect(masking_gateway, "alice") as conn:
                selected = conn.execute(f"select {columns} from shop.orders order by id").fetchall()
                if selected[0][2] == 0 or time.monotonic() > deadline:
                    with conn.cursor() as cur:
                        sql = f"copy shop.orders ({columns}) to stdout (format binary)"
                        with cur.copy(sql) as copy:
                            copy.set_types(["int4", "int4", "numeric", "text", "timestamptz"])
                            copied = list(copy.rows())
                        text = text_rows(copy_bytes(conn, f"copy shop.orders ({columns}) to stdout"))
                    break
            time.sleep(0.5)
    finally:
        gw.delete_policy("analysts-orders-typed")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert len(copied) >= 5000
    assert all(r[1] is None and r[2] == Decimal(0) and r[4] == epoch for r in copied)
    assert copied == selected
    assert {(r[1], r[2], r[4]) for r in text} == {(None, "0", "1970-01-01 00:00:00+00")}
