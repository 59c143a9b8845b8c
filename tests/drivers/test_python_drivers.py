"""psycopg 3 and asyncpg through the endpoint: TLS verify-full, simple and prepared statements, text and
binary results, transactions, COPY both ways, cancel (both libpq cancel paths; asyncpg's timeout
cancel), errors that leave the session usable, and psycopg's pipeline mode."""

from __future__ import annotations

import asyncio
import io
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

pytestmark = pytest.mark.drivers

AGG = "select count(*)::int8, sum(amount), max(created_at), min(id)::int4 from shop.orders where id <= {}"


# ----------------------------------------------------------------------------------------- psycopg


def _conninfo(ep: Any) -> str:
    return make_conninfo(
        host=ep.host,
        port=ep.port,
        dbname=ep.dbname,
        user=ep.user,
        password=ep.password,
        sslmode="verify-full",
        sslrootcert=ep.sslrootcert,
        connect_timeout=20,
        application_name="pgward-psycopg-check",
    )


@pytest.fixture
def conn(pg_endpoint: Any) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(_conninfo(pg_endpoint), autocommit=True) as c:
        yield c


def test_psycopg_connect_tls(conn: psycopg.Connection[Any]) -> None:
    pgconn = conn.info.pgconn
    assert pgconn.ssl_in_use


def test_psycopg_wrong_ca_is_refused(pg_endpoint: Any, tmp_path: Any) -> None:
    """verify-full really verifies: a different CA fails the handshake."""
    from control_plane.demo.certs import ensure_certs

    other = ensure_certs(tmp_path / "other-ca")
    info = _conninfo(pg_endpoint).replace(pg_endpoint.sslrootcert, str(other.ca_cert))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(info).close()


def test_psycopg_simple_query(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("select count(*) from shop.customers", prepare=False).fetchone()
    assert row is not None and row[0] >= 1000


def test_psycopg_prepared_statement(conn: psycopg.Connection[Any]) -> None:
    conn.prepare_threshold = 0  # server-side prepared from the first execution
    names = {}
    for _ in range(2):
        for cid in (1, 2, 3, 500, 1000):
            row = conn.execute("select name from shop.customers where id = %s", (cid,)).fetchone()
            assert row is not None and row[0]
            assert names.setdefault(cid, row[0]) == row[0]
    row = conn.execute("select count(*) from shop.customers where name = %s", (names[1],)).fetchone()
    assert row is not None and row[0] >= 1
    # psycopg names its server-side statements _pg3_N: they are there, on this session.
    stmts = conn.execute("select count(*) from pg_prepared_statements where name like '_pg3_%%'").fetchone()
    assert stmts is not None and stmts[0] >= 2


def test_psycopg_binary_results(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor(binary=True) as cur:
        cur.execute(AGG.format("%s"), (4000,))
        binary = cur.fetchone()
        assert cur.pgresult is not None
        assert [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)] == [1, 1, 1, 1]
    with conn.cursor() as cur:
        cur.execute(AGG.format(4000))
        text = cur.fetchone()
        assert cur.pgresult is not None and cur.pgresult.fformat(0) == 0
    assert binary == text
    assert binary is not None and binary[0] == 4000
    assert isinstance(binary[1], Decimal) and isinstance(binary[2], datetime)


def test_psycopg_transaction_rollback(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("create temp table pgward_psycopg_tx (id int, note text)")
        with conn.cursor() as cur:
            rows = [(i, f"row {i}") for i in range(10)]
            cur.executemany("insert into pgward_psycopg_tx values (%s, %s)", rows)
        assert conn.execute("select count(*) from pgward_psycopg_tx").fetchone() == (10,)
    assert conn.execute("select to_regclass('pg_temp.pgward_psycopg_tx') is null").fetchone() == (True,)


def test_psycopg_copy_out(conn: psycopg.Connection[Any]) -> None:
    expected = conn.execute("select count(*) from shop.orders").fetchone()
    assert expected is not None and expected[0] >= 5000
    data = bytearray()
    with conn.cursor() as cur, cur.copy("COPY shop.orders TO STDOUT") as copy:
        for chunk in copy:
            data += chunk
    assert data.count(b"\n") == expected[0]
    # The binary COPY format, parsed into typed rows.
    binary_copy = "COPY (select id, amount from shop.orders) TO STDOUT (FORMAT binary)"
    with conn.cursor() as cur, cur.copy(binary_copy) as copy:
        copy.set_types(["int4", "numeric"])
        rows = list(copy.rows())
    assert len(rows) == expected[0] and all(isinstance(a, Decimal) for _, a in rows[:10])


def test_psycopg_copy_in(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create temp table pgward_psycopg_copy (id int, amount numeric(10,2), note text)")
    with conn.cursor() as cur:
        with cur.copy("COPY pgward_psycopg_copy FROM STDIN") as copy:
            for i in range(1, 2001):
                copy.write_row((i, Decimal(f"{i}.25"), f"note {i}"))
        with cur.copy("COPY pgward_psycopg_copy (id, amount, note) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "numeric", "text"])
            for i in range(2001, 2501):
                copy.write_row((i, Decimal(f"{i}.25"), f"note {i}"))
    row = conn.execute("select count(*), sum(amount) from pgward_psycopg_copy").fetchone()
    assert row == (2500, Decimal("3126875.00"))


@pytest.mark.parametrize("method", ["cancel_safe", "cancel"])
def test_psycopg_cancel(conn: psycopg.Connection[Any], method: str) -> None:
    """cancel_safe() uses libpq's PQcancelConn (encrypted like the connection when libpq >= 17);
    cancel() the classic PQcancel (a plaintext CancelRequest)."""
    timer = threading.Timer(0.5, getattr(conn, method))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(errors.QueryCanceled) as exc:
            conn.execute("select pg_sleep(30)")
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert exc.value.sqlstate == "57014"
    assert elapsed < 10, f"the cancel took {elapsed:.1f} s"
    assert conn.execute("select 42").fetchone() == (42,)


def test_psycopg_error_recovery(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.DivisionByZero) as exc:
        conn.execute("select 1/0")
    assert exc.value.sqlstate == "22012"
    with pytest.raises(errors.DivisionByZero):
        conn.execute("select %s::int / 0", (1,))
    assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)


def test_psycopg_pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        cursors = []
        for cid in (1, 2, 3, 4, 5):
            cur = conn.cursor()
            cur.execute("select id, name from shop.customers where id = %s", (cid,))
            cursors.append(cur)
        total = conn.execute("select count(*) from shop.orders")
    assert [c.fetchone()[0] for c in cursors] == [1, 2, 3, 4, 5]  # type: ignore[index]
    assert total.fetchone()[0] >= 5000  # type: ignore[index]
    # An error inside a pipeline: reported at the sync, the session stays usable.
    with pytest.raises(errors.DivisionByZero), conn.pipeline() as p:
        conn.execute("select 1")
        conn.execute("select 1/0")
        conn.execute("select 2")
        p.sync()
    assert conn.execute("select 42").fetchone() == (42,)


# ----------------------------------------------------------------------------------------- asyncpg


def _ssl_context(ep: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ep.sslrootcert)
    ctx.check_hostname = True  # verify-full: the certificate must name the host (an IP SAN here)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _aconnect(ep: Any) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=ep.host,
        port=ep.port,
        database=ep.dbname,
        user=ep.user,
        password=ep.password,
        ssl=_ssl_context(ep),
        timeout=20,
        server_settings={"application_name": "pgward-asyncpg-check"},
    )


def _arun(ep: Any, body: Any) -> Any:
    async def main() -> Any:
        c = await _aconnect(ep)
        try:
            return await asyncio.wait_for(body(c), 120)
        finally:
            await c.close(timeout=10)

    return asyncio.run(main())


def test_asyncpg_connect_and_simple_query(pg_endpoint: Any) -> None:
    async def body(c: asyncpg.Connection) -> None:
        assert c.get_server_version().major >= 13
        transport = c._transport  # the TLS transport asyncpg upgraded to
        assert transport.get_extra_info("sslcontext") is not None
        n = await c.fetchval("select count(*) from shop.customers")
        assert n >= 1000
        # Several statements in one simple Query.
        await c.execute("select 1; select 2; set application_name = 'pgward-asyncpg-check'")

    _arun(pg_endpoint, body)


def test_asyncpg_prepared_and_binary(pg_endpoint: Any) -> None:
    async def body(c: asyncpg.Connection) -> None:
        stmt = await c.prepare("select name from shop.customers where id = $1")
        names = [await stmt.fetchval(cid) for cid in (1, 2, 3, 500, 1000)]
        assert all(names)
        assert await c.fetchval("select count(*) from shop.customers where name = $1", names[0]) >= 1
        # asyncpg reads every result in binary; compare with the server's own text rendering.
        row = await c.fetchrow(AGG.format("$1"), 4000)
        text = await c.fetchrow(
            "select count(*)::text, sum(amount)::text, to_char(max(created_at) at time zone 'UTC',"
            " 'YYYY-MM-DD HH24:MI:SS.US'), min(id)::text from shop.orders where id <= $1",
            4000,
        )
        assert row[0] == 4000 and str(row[0]) == text[0]
        assert row[1] == Decimal(text[1])
        assert row[2].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") == text[2]
        assert str(row[3]) == text[3]

    _arun(pg_endpoint, body)


def test_asyncpg_transaction_rollback(pg_endpoint: Any) -> None:
    class Abort(Exception):
        pass

    async def body(c: asyncpg.Connection) -> None:
        with pytest.raises(Abort):
            async with c.transaction():
                await c.execute("create temp table pgward_asyncpg_tx (id int, note text)")
                rows = [(i, f"r{i}") for i in range(10)]
                await c.executemany("insert into pgward_asyncpg_tx values ($1, $2)", rows)
                assert await c.fetchval("select count(*) from pgward_asyncpg_tx") == 10
                raise Abort
        assert await c.fetchval("select to_regclass('pg_temp.pgward_asyncpg_tx') is null") is True

    _arun(pg_endpoint, body)


def test_asyncpg_copy(pg_endpoint: Any) -> None:
    async def body(c: asyncpg.Connection) -> None:
        out = io.BytesIO()
        await c.copy_from_table("orders", schema_name="shop", output=out)
        expected = await c.fetchval("select count(*) from shop.orders")
        assert out.getvalue().count(b"\n") == expected >= 5000
        await c.execute("create temp table pgward_asyncpg_copy (id int, amount numeric(10,2), note text)")
        records = [(i, Decimal(f"{i}.25"), f"note {i}") for i in range(1, 2001)]
        await c.copy_records_to_table("pgward_asyncpg_copy", records=records)  # binary COPY FROM STDIN
        row = await c.fetchrow("select count(*), sum(amount) from pgward_asyncpg_copy")
        assert tuple(row) == (2000, Decimal("2001500.00"))

    _arun(pg_endpoint, body)


def test_asyncpg_cancel_on_timeout(pg_endpoint: Any) -> None:
    """asyncio.wait_for cancels the task; asyncpg then sends a CancelRequest and waits for the server."""

    async def body(c: asyncpg.Connection) -> float:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.execute("select pg_sleep(30)"), 0.5)
        # Only answers once the server has abandoned pg_sleep(30).
        assert await asyncio.wait_for(c.fetchval("select 42"), 10) == 42
        # The built-in timeout does the same.
        with pytest.raises(asyncio.TimeoutError):
            await c.execute("select pg_sleep(30)", timeout=0.5)
        assert await asyncio.wait_for(c.fetchval("select 43"), 10) == 43
        return time.monotonic() - started

    elapsed = _arun(pg_endpoint, body)
    assert elapsed < 15


def test_asyncpg_error_recovery(pg_endpoint: Any) -> None:
    async def body(c: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.DivisionByZeroError) as exc:
            await c.fetchval("select 1/0")
        assert exc.value.sqlstate == "22012"
        with pytest.raises(asyncpg.DivisionByZeroError):
            await c.execute("select 1/0")  # simple protocol
        assert await c.fetchval("select $1::int + 1", 41) == 42

    _arun(pg_endpoint, body)
