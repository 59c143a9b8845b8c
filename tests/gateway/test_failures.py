"""Bad input and broken peers: each ends only the session concerned, with a clear error, and the
gateway keeps serving everybody else."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_plane.pgserver import LocalPostgres
from tests.fixtures.gateway import Gateway, free_port
from tests.fixtures.postgres import TargetDatabase
from tests.gateway.wire import Wire, message, query


def still_serving(gateway: Gateway) -> None:
    r = gateway.psql("select 42")
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr


def logged_in(gateway: Gateway) -> Wire:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token)
    assert msgs[-1].tag == b"Z", msgs[-1]
    return w


@pytest.mark.parametrize(
    "frame",
    [
        b"Q" + struct.pack("!i", -1),
        b"Q" + struct.pack("!i", 3),
        b"Q" + struct.pack("!i", 0x7FFFFFFF),
        b"P" + struct.pack("!i", 1 << 30),
    ],
    ids=["negative", "below-4", "max-int", "oversized"],
)
def test_bad_lengths_close_with_08P01(gateway: Gateway, frame: bytes) -> None:
    w = logged_in(gateway)
    w.send(frame)
    m = w.read()
    assert m is not None and m.tag == b"E", m
    assert m.fields()["C"] == "08P01" and m.fields()["S"] == "FATAL"
    assert w.read() is None
    still_serving(gateway)


def test_malformed_query_body(gateway: Gateway) -> None:
    w = logged_in(gateway)
    w.send(message(b"Q", b"select 1"))  # no NUL terminator
    m = w.read()
    assert m is not None and m.fields()["C"] == "08P01"
    still_serving(gateway)


def test_malformed_startup_packets(gateway: Gateway) -> None:
    for packet in (
        struct.pack("!I", 2),
        struct.pack("!I", 100_000) + b"x" * 10,
        struct.pack("!II", 12, 1234) + b"abcd",
    ):
        w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
        w.send(packet)
        m = w.read()
        assert m is None or m.tag == b"E"
        w.close()
    still_serving(gateway)


def test_garbage_before_tls(gateway: Gateway) -> None:
    w = Wire.connect_plain(gateway.host, gateway.port)
    w.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    m = w.read()
    assert m is None or m.tag == b"E"
    still_serving(gateway)


def test_client_disconnects_mid_result(gateway: Gateway) -> None:
    for _ in range(5):
        w = logged_in(gateway)
        w.send(query("select g, repeat('y', 500) from generate_series(1, 2000000) g"))
        assert w.read() is not None  # the result has started
        w.close()
    still_serving(gateway)


def test_client_silent_after_connect_does_not_block_others(gateway: Gateway) -> None:
    idle = [Wire.connect_plain(gateway.host, gateway.port) for _ in range(20)]
    still_serving(gateway)
    for w in idle:
        w.close()


def test_upstream_down_is_08006(gateway: Gateway) -> None:
    gateway.put_connection(
        "down", host="127.0.0.1", port=free_port(), database="x", username="x", tls_mode="disable"
    )
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, database="down")
    error = msgs[-1].fields()
    assert error["C"] == "08006" and error["S"] == "FATAL"
    still_serving(gateway)


def test_wrong_stored_password_is_08006_without_the_secret(
    gateway: Gateway, target_pg: TargetDatabase
) -> None:
    gateway.put_connection(
        "badpw",
        host="127.0.0.1",
        port=target_pg.port,
        database="shop",
        username=target_pg.shop.role,
        password="definitely-wrong-pw",
        tls_mode="disable",
    )
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, database="badpw")
    error = msgs[-1].fields()
    assert error["C"] == "08006"
    assert "definitely-wrong-pw" not in str(error)


@pytest.fixture
def restartable(pg_base_dir: Path, gateway: Gateway) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(pg_base_dir / f"restartable-{time.monotonic_ns()}", durable=False).start()
    with pg.connect() as c:
        c.execute("create role app login password 'app-pw'")
    gateway.put_connection(
        "restartable",
        host="127.0.0.1",
        port=pg.port,
        database="postgres",
        username="app",
        password="app-pw",
        tls_mode="disable",
    )
    try:
        yield pg
    finally:
        pg.stop()


def test_upstream_restart_mid_session(gateway: Gateway, restartable: LocalPostgres) -> None:
    conninfo = gateway.conninfo(dbname="restartable")
    with psycopg.connect(conninfo, password=gateway.ci_token, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        restartable.stop()
        restartable.start()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    with psycopg.connect(conninfo, password=gateway.ci_token, autocommit=True) as conn:
        assert conn.execute("select 2").fetchone() == (2,)
    still_serving(gateway)


def test_tls_to_the_target_with_scram_plus(gateway: Gateway, tls_target: TargetDatabase) -> None:
    assert tls_target.ca_cert is not None
    gateway.put_connection(
        "shop_tls",
        host="127.0.0.1",
        port=tls_target.port,
        database="shop",
        username=tls_target.shop.role,
        password=tls_target.shop.password,
        tls_mode="verify-full",
        sslrootcert=tls_target.ca_cert.read_text(),
    )
    with psycopg.connect(gateway.conninfo(dbname="shop_tls"), password=gateway.ci_token) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        assert conn.execute("select count(*) from shop.customers").fetchone() == (1000,)
