"""The per-statement decision point: the deny list refuses statements with 42501 and the session
stays usable, in and out of transactions and in pipelines."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.gateway import Gateway


@pytest.fixture
def conn(gateway: Gateway):
    with psycopg.connect(gateway.conninfo(), password=gateway.ci_token, autocommit=True) as c:
        yield c


def orders(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from shop.orders").fetchone()[0]  # type: ignore[index]


def test_denied_statement_is_42501_and_never_runs(conn: psycopg.Connection) -> None:
    before = orders(conn)
    with pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute("truncate shop.orders")
    diag = info.value.diag
    assert diag.message_primary == "TRUNCATE is not allowed through pgward"
    assert diag.message_detail and "deny list" in diag.message_detail
    assert orders(conn) == before
    assert conn.execute("select 1").fetchone() == (1,)


def test_multi_statement_query_is_refused_whole(gateway: Gateway) -> None:
    r = gateway.psql(
        "create temp table side_effect(x int); truncate shop.orders", "select count(*) from side_effect"
    )
    assert "TRUNCATE is not allowed through pgward" in r.stderr
    assert 'relation "side_effect" does not exist' in r.stderr


def test_denial_inside_a_transaction_aborts_it_like_an_error(conn: psycopg.Connection) -> None:
    conn.execute("begin")
    conn.execute("create temp table tx(x int)")
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("truncate shop.orders")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("select 1")
    conn.execute("rollback")
    assert conn.execute("select 2").fetchone() == (2,)


def test_denied_parse_in_the_extended_protocol(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("truncate shop.orders", prepare=True)
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("truncate shop.orders", ())
    assert conn.execute("select %s::int", (5,)).fetchone() == (5,)


def test_pipeline_with_a_denial_answers_until_sync_as_the_server_would(conn: psycopg.Connection) -> None:
    before = orders(conn)
    results: list[object] = []
    with pytest.raises(errors.InsufficientPrivilege):
        with conn.pipeline() as p:
            results.append(conn.execute("select 1").fetchone())
            conn.execute("truncate shop.orders")
            conn.execute("select 2")
            p.sync()
    # After the failed pipeline the connection works and nothing was truncated.
    assert orders(conn) == before
    with conn.pipeline() as p:
        a = conn.execute("select 10")
        b = conn.execute("select 20")
        p.sync()
    assert a.fetchone() == (10,) and b.fetchone() == (20,)


def test_repeated_denials_and_allows_in_one_session(conn: psycopg.Connection) -> None:
    for i in range(20):
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("truncate shop.orders")
        assert conn.execute("select %s::int", (i,)).fetchone() == (i,)


def test_comments_and_case_do_not_hide_a_statement(conn: psycopg.Connection) -> None:
    for sql in (
        "/* hi */ TrUnCaTe shop.orders",
        "-- x\ntruncate table shop.orders",
        "truncate only shop.orders;",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(sql)


def test_unparsable_statement_is_refused_with_the_parser_message(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.SyntaxError) as info:
        conn.execute("selec 1")
    assert "could not parse" in str(info.value)
    assert conn.execute("select 1").fetchone() == (1,)


def test_deny_list_applies_to_other_kinds(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.InsufficientPrivilege, match="ALTER SYSTEM"):
        conn.execute("alter system set work_mem = '8MB'")
    with pytest.raises(errors.InsufficientPrivilege, match="DROP DATABASE"):
        conn.execute("drop database shop")


def proxy_metric(gateway: Gateway, name: str) -> float:
    import httpx

    text = httpx.get(f"{gateway.api_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"pgward_proxy_{name} ") or line.startswith(f"pgward_proxy_{name}_total "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_repeated_statements_cost_no_python_call(gateway: Gateway, conn: psycopg.Connection) -> None:
    # Same shape, different constants: one Python decision, then fingerprint cache hits.
    conn.execute("select name from shop.customers where id = 1 /* warm */")
    # A session that brings a new catalog snapshot clears the decision cache twice: at once and
    # again 0.2 s later (for answers in flight). Warm up after the second clear.
    time.sleep(0.5)
    conn.execute("select name from shop.customers where id = 1 /* warm */")
    before = proxy_metric(gateway, "python_decisions")
    hits_before = proxy_metric(gateway, "cache_hits_fingerprint")
    for i in range(2, 52):
        conn.execute(f"select name from shop.customers where id = {i} /* warm */")
    assert proxy_metric(gateway, "python_decisions") == before
    assert proxy_metric(gateway, "cache_hits_fingerprint") >= hits_before + 50


def test_fastpath_function_call_is_refused_and_the_session_goes_on(gateway: Gateway) -> None:
    import struct

    from tests.gateway.wire import Wire, message, query

    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    assert w.login("ci", gateway.ci_token)[-1].tag == b"Z"
    # pg_read_file(text) is OID 2624: reachable by OID only through the fastpath protocol.
    arg = b"/etc/hosts"
    body = struct.pack("!Ihhi", 2624, 0, 1, len(arg)) + arg + struct.pack("!h", 0)
    w.send(message(b"F", body))
    replies = w.read_until(b"Z")
    error = next(m for m in replies if m.tag == b"E").fields()
    assert error["C"] == "42501" and "fastpath" in error["M"]
    assert not any(m.tag == b"V" for m in replies)
    w.send(query("select 7"))
    assert any(m.tag == b"D" and m.body.endswith(b"7") for m in w.read_until(b"Z"))
    w.close()
