"""The data plane's masking contract, end to end against the real target: a session whose scope
carries `masks` sees those columns masked in every result format and protocol path, and never
receives COPY TO output it cannot mask. The decision service here is a small in-process one that
answers with a fixed scope, so these tests exercise exactly the Rust half of masking."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from control_plane.dataplane import Dataplane
from control_plane.demo.certs import TlsFiles, ensure_certs
from tests.fixtures.gateway import free_port
from tests.fixtures.postgres import TargetDatabase

PII = ("email", "phone", "ssn", "card_number")
FUNCTIONS = {"email": "email", "phone": "partial", "ssn": "hash", "card_number": "last4"}


class FixedScopeService:
    """Answers the data plane: every credential gets the same scope, every statement is allowed."""

    def __init__(self, dataplane: Dataplane, scope: dict[str, Any]) -> None:
        self.dataplane = dataplane
        self.scope = scope

    def on_wake(self) -> None:
        try:
            os.read(self.dataplane.wake_fd(), 4096)
        except BlockingIOError:
            pass
        for request_id, kind, _payload in self.dataplane.take_requests():
            if kind == "authenticate":
                self.dataplane.respond(request_id, {"ok": True, "scope": self.scope})
            elif kind == "decide":
                self.dataplane.respond(request_id, {"action": "allow", "cache": "fingerprint"})


@pytest.fixture(scope="module")
def clear_rows(target_pg: TargetDatabase) -> list[tuple[Any, ...]]:
    with psycopg.connect(target_pg.owner_dsn) as conn:
        return conn.execute(f"select id, {', '.join(PII)} from shop.customers order by id").fetchall()


@pytest.fixture(scope="module")
def masked_gateway(target_pg: TargetDatabase, pg_base_dir: Path) -> Iterator[tuple[int, TlsFiles]]:
    with psycopg.connect(target_pg.owner_dsn) as conn:
        attnums = dict(
            conn.execute(
                "select attname, attnum from pg_attribute where attrelid = 'shop.customers'::regclass"
                " and attname = any(%s)",
                (list(PII),),
            ).fetchall()
        )
        table_oid = conn.execute("select 'shop.customers'::regclass::oid").fetchone()[0]  # type: ignore[index]
    scope = {
        "scope_key": "masking-test",
        "identity": "masked",
        "session_uuid": "00000000-0000-4000-8000-000000000001",
        "upstream": {
            "host": "127.0.0.1",
            "port": target_pg.port,
            "database": "shop",
            "user": target_pg.shop.role,
            "password": target_pg.shop.password,
            "tls_mode": "disable",
        },
        "masks": [
            {"table_oid": table_oid, "attnum": attnums[c], "function": FUNCTIONS[c], "first": 0, "last": 4}
            for c in PII
        ],
        "mask_key": "00112233445566778899aabbccddeeff",
    }
    tls = ensure_certs(pg_base_dir / "masking-tls")
    port = free_port()
    dataplane = Dataplane(f"127.0.0.1:{port}", str(tls.server_cert), str(tls.server_key))
    dataplane.start()
    service = FixedScopeService(dataplane, scope)
    loop = asyncio.new_event_loop()
    os.set_blocking(dataplane.wake_fd(), False)
    loop.add_reader(dataplane.wake_fd(), service.on_wake)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, tls
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        dataplane.stop()


def conninfo(port: int, tls: TlsFiles) -> str:
    return (
        f"host=127.0.0.1 port={port} dbname=shop user=masked password=x"
        f" sslmode=verify-full sslrootcert={tls.ca_cert}"
    )


def assert_no_clear_value(received: Any, clear_rows: list[tuple[Any, ...]]) -> None:
    text = repr(received)
    for row in clear_rows[:200]:
        for value in row[1:]:
            assert value not in text, f"clear value {value!r} reached the client"


def test_simple_and_extended_text_and_binary(
    masked_gateway: tuple[int, TlsFiles], clear_rows: list[Any]
) -> None:
    port, tls = masked_gateway
    with psycopg.connect(conninfo(port, tls), autocommit=True) as conn:
        simple = conn.execute(f"select id, {', '.join(PII)} from shop.customers order by id").fetchall()
        prepared = conn.execute(
            "select id, email, card_number from shop.customers where id > %s order by id", (0,), prepare=True
        ).fetchall()
        binary = conn.cursor(binary=True).execute("select * from shop.customers order by id").fetchall()
    assert len(simple) == len(clear_rows)
    for got, clear in zip(simple, clear_rows, strict=True):
        assert got[0] == clear[0]
        assert got[1] == "****@" + clear[1].split("@")[1]
        assert got[2] == "*" * (len(clear[2]) - 4) + clear[2][-4:]
        assert got[3] != clear[3] and len(got[3]) == 24
        digits = [c for c in clear[4] if c.isdigit()]
        assert got[4] == "*" * (len(digits) - 4) + "".join(digits[-4:])
    assert_no_clear_value(simple, clear_rows)
    assert_no_clear_value(prepared, clear_rows)
    assert_no_clear_value(binary, clear_rows)
    # Hashing is deterministic: equal inputs, equal outputs (joins and GROUP BY keep working).
    assert simple[0][3] == binary[0][4]


def test_execute_without_describe_and_cursors(
    masked_gateway: tuple[int, TlsFiles], clear_rows: list[Any]
) -> None:
    port, tls = masked_gateway

    async def run() -> list[Any]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="masked",
            password="x",
            database="shop",
            ssl=__import__("ssl").create_default_context(cafile=str(tls.ca_cert)),
        )
        try:
            stmt = await conn.prepare("select id, email, ssn from shop.customers where id <= $1 order by id")
            rows = [tuple(r) for r in await stmt.fetch(50)]
            rows += [tuple(r) for r in await stmt.fetch(60)]  # re-executes the described statement
            async with conn.transaction():
                cur = await conn.cursor("select email, phone from shop.customers order by id")
                rows += [tuple(r) for r in await cur.fetch(30)]
            return rows
        finally:
            await conn.close()

    rows = asyncio.run(run())
    assert len(rows) == 140
    assert_no_clear_value(rows, clear_rows)


def test_fetch_from_a_declared_cursor(masked_gateway: tuple[int, TlsFiles], clear_rows: list[Any]) -> None:
    port, tls = masked_gateway
    with psycopg.connect(conninfo(port, tls)) as conn:
        conn.execute("declare c cursor for select * from shop.customers order by id")
        rows = conn.execute("fetch 100 from c").fetchall()
    assert len(rows) == 100
    assert_no_clear_value(rows, clear_rows)


def test_copy_out_is_never_relayed(masked_gateway: tuple[int, TlsFiles], clear_rows: list[Any]) -> None:
    port, tls = masked_gateway
    received: list[bytes] = []
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        with psycopg.connect(conninfo(port, tls), autocommit=True) as conn:
            with conn.cursor().copy("copy shop.customers to stdout") as copy:
                for chunk in copy:
                    received.append(bytes(chunk))
    assert "COPY TO" in str(info.value)
    assert_no_clear_value(received, clear_rows)


def test_unmasked_columns_and_other_tables_pass_unchanged(
    masked_gateway: tuple[int, TlsFiles], target_pg: TargetDatabase
) -> None:
    port, tls = masked_gateway
    sql = "select id, name, created_at from shop.customers order by id limit 20"
    with psycopg.connect(conninfo(port, tls)) as conn:
        through = conn.execute(sql).fetchall()
        orders = conn.execute("select * from shop.orders order by id limit 20").fetchall()
    with psycopg.connect(target_pg.owner_dsn) as direct:
        assert through == direct.execute(sql).fetchall()
        assert orders == direct.execute("select * from shop.orders order by id limit 20").fetchall()
