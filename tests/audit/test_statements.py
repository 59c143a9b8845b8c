"""Every statement run through the gateway is on record once, with its decision, rows, SQLSTATE,
duration and result digest: each part of a multi-statement Query, each Execute of a prepared
statement (also when decided from the data plane's cache), denials and errors."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import psycopg
import pytest
from psycopg import errors

from tests.audit.conftest import AuditGateway


def marker() -> str:
    return f"mark_{uuid.uuid4().hex[:12]}"


def proxy_metric(gw: AuditGateway, name: str) -> float:
    text = httpx.get(f"{gw.gw.api_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith((f"pgward_proxy_{name} ", f"pgward_proxy_{name}_total ")):
            return float(line.split()[-1])
    raise AssertionError(name)


def test_each_part_of_a_multi_statement_query(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    m = marker()
    r = gw.psql(
        f"select '{m}'",
        "create temp table t(x int); insert into t select generate_series(1, 5); "
        "update t set x = x + 1 where x > 2; select * from t; delete from t",
        "select 1; select 1/0; select 3",
    )
    assert "division by zero" in r.stderr
    events = audit_gateway.session_events(m, 8)
    got = [(e["statement"], e["command"], e["rows"], e["sqlstate"]) for e in events]
    assert got == [
        (f"select '{m}'", "SELECT", 1, None),
        ("create temp table t(x int)", "CREATE TABLE", None, None),
        ("insert into t select generate_series(1, 5)", "INSERT", 5, None),
        ("update t set x = x + 1 where x > 2", "UPDATE", 3, None),
        ("select * from t", "SELECT", 5, None),
        ("delete from t", "DELETE", 5, None),
        ("select 1", "SELECT", 1, None),
        ("select 1/0", None, None, "22012"),
    ]
    # `select 3` never ran: the server skipped it after the error, and so does the audit.
    for e in events:
        assert e["decision"] == "allow" and e["source"] == "query"
        assert e["identity"]["username"] == "ci" and e["connection"] == "shop"
        assert e["policy"] == "fixture-ci-everything" and e["policy_version"]
        assert len(e["fingerprint"]) == 16 and e["duration_us"] >= 0
        assert e["time"].endswith("Z")
    classes = {e["statement"]: (e["class"], e["statement_kind"]) for e in events}
    assert classes["insert into t select generate_series(1, 5)"][1] == "InsertStmt"
    assert classes["select * from t"] == ("read", "SelectStmt")
    assert events[4]["rows_sent"] == 5 and len(events[4]["result_digest"]) == 64


def test_prepared_statements_repeated_from_the_cache(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    m = marker()
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"select '{m}'")
        conn.execute("select %s::int + 0 as warm", (0,))
        before = proxy_metric(audit_gateway, "python_decisions")
        for i in range(10):
            assert conn.execute("select %s::int + 0 as warm", (i,)).fetchone() == (i,)
        for i in range(5):
            cur = conn.execute("select id from shop.orders where id <= %s", (i + 1,), prepare=True)
            assert len(cur.fetchall()) == i + 1
        assert proxy_metric(audit_gateway, "python_decisions") <= before + 1
    events = audit_gateway.session_events(m, 17)
    warm = [e for e in events if e["statement"] == "select $1::int + 0 as warm"]
    assert len(warm) == 11
    assert all(e["source"] == "execute" and e["rows"] == 1 for e in warm)
    # psycopg sends small ints in binary (int2): recorded as hex.
    assert [e["params"] for e in warm[1:]] == [[f"\\x{i:04x}"] for i in range(10)]
    prepared = [e for e in events if e["statement"] == "select id from shop.orders where id <= $1"]
    assert [e["rows"] for e in prepared] == [1, 2, 3, 4, 5]
    assert len({e["fingerprint"] for e in prepared}) == 1


def test_denied_statements_are_on_record(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    m = marker()
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"select '{m}'")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("truncate shop.orders")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("truncate shop.customers", prepare=True)
        assert conn.execute("select 2").fetchone() == (2,)
    events = audit_gateway.session_events(m, 4)
    denied = [e for e in events if e["decision"] == "deny"]
    assert [e["statement"] for e in denied] == ["truncate shop.orders", "truncate shop.customers"]
    for e in denied:
        assert (
            e["sqlstate"] == "42501" and e["refusal"]["message"] == "TRUNCATE is not allowed through pgward"
        )
        assert e["rule"] == "deny_statements" and e["result_digest"] is None and e["rows"] is None
    assert events[-1]["statement"] == "select 2" and events[-1]["sqlstate"] is None
    # Searchable like the contract says.
    found = audit_gateway.events(decision="deny", q="truncate shop.customers")
    assert any(e["session"] == events[0]["session"] for e in found)


def test_errors_carry_their_sqlstate(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    m = marker()
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"select '{m}'")
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        with pytest.raises(errors.UniqueViolation):
            conn.execute("insert into shop.orders (id, customer_id, amount, status) values (1, 1, 1, 'x')")
    events = audit_gateway.session_events(m, 3)
    assert [e["sqlstate"] for e in events[1:]] == ["42P01", "23505"]


def test_result_digest_is_over_the_rows_the_client_received(audit_gateway: AuditGateway) -> None:
    from tests.gateway.wire import Wire, query

    gw = audit_gateway.gw
    m = marker()
    w = Wire.connect_tls(gw.host, gw.port, gw.sslrootcert)
    try:
        assert w.login("ci", gw.ci_token)[-1].tag == b"Z"
        w.send(query(f"select '{m}', id, status from shop.orders where id <= 20 order by id"))
        replies = w.read_until(b"Z")
    finally:
        w.close()
    digest = hashlib.sha256()
    for msg in replies:
        if msg.tag == b"D":
            digest.update(b"D" + (len(msg.body) + 4).to_bytes(4, "big") + msg.body)
    (event,) = audit_gateway.session_events(m, 1)
    assert event["rows"] == 20 and event["result_digest"] == digest.hexdigest()


def test_a_copy_and_a_session_end_follow_in_the_chain(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    m = marker()
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"select '{m}'")
        with conn.cursor().copy("copy (select id from shop.orders where id <= 7) to stdout") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    assert data.count(b"\n") == 7
    events = audit_gateway.session_events(m, 2)
    assert events[1]["command"] == "COPY" and events[1]["rows"] == 7
    assert len(events[1]["result_digest"]) == 64
    r = audit_gateway.store.pgward("audit", "verify")
    assert r.returncode == 0, r.stderr
