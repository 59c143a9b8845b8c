"""Relaying through the gateway with psycopg: results, transactions, pipelines, COPY, notifications,
cancel — compared with what the target itself returns."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.gateway import Gateway
from tests.fixtures.postgres import TargetDatabase


@pytest.fixture
def conn(gateway: Gateway):
    with psycopg.connect(gateway.conninfo(), password=gateway.ci_token, autocommit=True) as c:
        yield c


def test_rows_match_the_target(conn: psycopg.Connection, target_pg: TargetDatabase) -> None:
    sql = (
        "select c.id, name, email, amount from shop.customers c"
        " join shop.orders o on o.customer_id = c.id order by o.id limit 500"
    )
    through = conn.execute(sql).fetchall()
    with psycopg.connect(target_pg.owner_dsn) as direct:
        assert through == direct.execute(sql).fetchall()


def test_parameters_binary_and_prepared(conn: psycopg.Connection) -> None:
    for _ in range(3):  # the third run uses a server-side prepared statement
        row = conn.execute("select id, name from shop.customers where id = %s", (7,), prepare=True).fetchone()
        assert row is not None and row[0] == 7
    cur = conn.cursor(binary=True)
    cur.execute("select id::int8, created_at, 1.5::numeric from shop.customers where id = %s", (3,))
    row = cur.fetchone()
    assert row is not None and row[0] == 3 and str(row[2]) == "1.5"


def test_transaction_rollback_and_error_state(conn: psycopg.Connection) -> None:
    conn.execute("create temp table t (x int)")
    with pytest.raises(psycopg.errors.DivisionByZero):
        with conn.transaction():
            conn.execute("insert into t values (1)")
            conn.execute("select 1/0")
    assert conn.execute("select count(*) from t").fetchone() == (0,)


def test_pipeline_mode(conn: psycopg.Connection) -> None:
    with conn.pipeline():
        curs = [conn.execute("select %s::int", (i,)) for i in range(50)]
    assert [c.fetchone()[0] for c in curs] == list(range(50))  # type: ignore[index]


def test_copy_out_and_in(conn: psycopg.Connection) -> None:
    with conn.cursor() as cur:
        lines = 0
        with cur.copy("copy shop.orders to stdout") as copy:
            for _ in copy:
                lines += 1
        assert lines == conn.execute("select count(*) from shop.orders").fetchone()[0]  # type: ignore[index]
        cur.execute("create temp table c (id int, note text)")
        with cur.copy("copy c from stdin") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        assert cur.execute("select count(*), max(id) from c").fetchone() == (1000, 999)


def test_listen_notify(gateway: Gateway, conn: psycopg.Connection) -> None:
    conn.execute("listen pgward_test")
    with psycopg.connect(gateway.conninfo(), password=gateway.ci_token, autocommit=True) as other:
        other.execute("notify pgward_test, 'hello'")
    got = next(conn.notifies(timeout=10))
    assert got.channel == "pgward_test" and got.payload == "hello"


def test_cancel_maps_to_the_upstream_key(conn: psycopg.Connection) -> None:
    timer = threading.Timer(0.5, conn.cancel_safe)
    timer.start()
    started = time.monotonic()
    with pytest.raises(errors.QueryCanceled):
        conn.execute("select pg_sleep(30)")
    assert time.monotonic() - started < 20
    assert conn.execute("select 1").fetchone() == (1,)


def test_notice_and_large_result(conn: psycopg.Connection) -> None:
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("do $$ begin raise notice 'from the target'; end $$")
    assert notices == ["from the target"]
    cur = conn.execute("select g, repeat('x', 100) from generate_series(1, 200000) g")
    n = sum(1 for _ in cur)
    assert n == 200000
