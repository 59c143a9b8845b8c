"""Delivery: a slow store makes sessions wait instead of losing records (buffered), a gateway
killed with SIGKILL in strict mode never ran a statement upstream that is missing from the audit,
and committed records reach a syslog collector listening on a real socket."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_plane.pgserver import LocalPostgres
from tests.audit.conftest import AuditGateway, start_audit_gateway, wait_for
from tests.fixtures.gateway import stop_gateway
from tests.fixtures.postgres import TargetDatabase

QUEUE = 5
BUFFER = 5


@pytest.fixture(scope="module")
def syslog_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def small_queue(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase, syslog_socket: socket.socket
) -> Iterator[AuditGateway]:
    port = syslog_socket.getsockname()[1]
    ag = start_audit_gateway(
        pg_base_dir / "audit-small-queue",
        store_pg,
        target_pg,
        PGWARD_AUDIT_QUEUE_SIZE=str(QUEUE),
        PGWARD_AUDIT_BUFFER_SIZE=str(BUFFER),
        PGWARD_AUDIT_SYSLOG=f"udp://127.0.0.1:{port}",
    )
    try:
        yield ag
    finally:
        stop_gateway(ag.gw)


def target_count(target: TargetDatabase, table: str) -> int:
    with psycopg.connect(target.superuser_dsn) as conn:
        return int(conn.execute(f"select count(*) from public.{table}").fetchone()[0])  # type: ignore[index]


def test_a_slow_store_makes_sessions_wait_and_loses_nothing(
    small_queue: AuditGateway, target_pg: TargetDatabase
) -> None:
    gw = small_queue.gw
    table = "audit_backpressure"
    total = 60
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"create table if not exists public.{table} (n int)")
        conn.execute(f"delete from public.{table}")
    store = psycopg.connect(small_queue.store.url.replace("postgresql+psycopg://", "postgresql://"))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
                for n in range(1, total + 1):
                    conn.execute(f"insert into public.{table} values ({n}) /* backpressure */")
        except BaseException as e:
            errors.append(e)

    try:
        # Writers block on this lock (readers do not): the store has become very slow.
        store.execute("lock table audit_events in exclusive mode")
        worker = threading.Thread(target=client)
        worker.start()
        # Wait until the client makes no more progress: it waits for room in the audit queue.
        last = -1
        while True:
            time.sleep(0.5)
            now = target_count(target_pg, table)
            if now == last:
                break
            last = now
        assert worker.is_alive(), "the client finished although no audit record could be committed"
        # What ran upstream is bounded by the queue, the writer's buffer and one statement in flight.
        assert 0 < last <= QUEUE + BUFFER + 2, last
    finally:
        store.rollback()
        store.close()
    worker.join(timeout=120)
    assert not worker.is_alive() and not errors, errors
    assert target_count(target_pg, table) == total
    records = wait_for(
        lambda: (
            [e for e in small_queue.events(kind="statement", q="/* backpressure */")]
            if len(small_queue.events(kind="statement", q="/* backpressure */")) >= total
            else []
        )
    )
    numbers = sorted(int(re.search(r"values \((\d+)\)", e["statement"]).group(1)) for e in records)  # type: ignore[union-attr]
    assert numbers == list(range(1, total + 1))
    assert small_queue.store.pgward("audit", "verify").returncode == 0


def test_committed_records_reach_the_syslog_collector(
    small_queue: AuditGateway, syslog_socket: socket.socket
) -> None:
    gw = small_queue.gw
    marker = "syslog_marker_7f3a"
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"select '{marker}'")
    deadline = time.monotonic() + 30
    message = b""
    while time.monotonic() < deadline and marker.encode() not in message:
        try:
            message = syslog_socket.recv(65536)
        except TimeoutError:
            continue
    assert marker.encode() in message
    header, _, body = message.partition(b"\xef\xbb\xbf")
    m = re.match(
        rb'<(\d+)>1 (\S+) (\S+) pgward (\d+) statement \[pgward@32473 stream="([0-9a-f-]+)" '
        rb'seq="(\d+)" hash="([0-9a-f]{64})"\] $',
        header,
    )
    assert m, header
    assert int(m.group(1)) == 16 * 8 + 6
    (event,) = small_queue.events(kind="statement", q=marker)
    assert (m.group(5).decode(), int(m.group(6)), m.group(7).decode()) == (
        event["stream"],
        event["seq"],
        event["hash"],
    )
    assert marker in body.decode()


@pytest.fixture
def strict_gateway(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase
) -> Iterator[AuditGateway]:
    ag = start_audit_gateway(pg_base_dir / "audit-strict", store_pg, target_pg, PGWARD_AUDIT_MODE="strict")
    try:
        yield ag
    finally:
        stop_gateway(ag.gw)


def test_strict_mode_killed_gateway_ran_nothing_unaudited(
    strict_gateway: AuditGateway, target_pg: TargetDatabase
) -> None:
    gw = strict_gateway.gw
    table = "audit_strict_probe"
    with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
        conn.execute(f"create table if not exists public.{table} (n int)")
        conn.execute(f"delete from public.{table}")
    stop = threading.Event()

    def client(offset: int) -> None:
        try:
            with psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True) as conn:
                n = offset
                while not stop.is_set():
                    n += 2
                    conn.execute(f"insert into public.{table} values ({n})")
        except psycopg.Error:
            pass  # the gateway was killed under it

    workers = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    for w in workers:
        w.start()
    try:
        assert wait_for(lambda: target_count(target_pg, table) >= 40, timeout=60)
        assert gw.process is not None
        gw.process.kill()  # SIGKILL: no chance to flush anything
        gw.process.wait()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    with psycopg.connect(target_pg.superuser_dsn) as conn:
        ran = {r[0] for r in conn.execute(f"select n from public.{table}").fetchall()}
    conninfo = strict_gateway.store.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as store:
        rows = store.execute(
            "select statement from audit_events where kind = 'intent' and statement like %s",
            (f"insert into public.{table} values (%",),
        ).fetchall()
    intents = {int(re.search(r"values \((\d+)\)", r[0]).group(1)) for r in rows}  # type: ignore[union-attr]
    assert len(ran) >= 40
    assert ran <= intents, f"ran upstream without an audit record: {sorted(ran - intents)[:10]}"
    assert strict_gateway.store.pgward("audit", "verify").returncode == 0


def test_a_store_connection_lost_mid_traffic_loses_and_duplicates_nothing(
    small_queue: AuditGateway, target_pg: TargetDatabase
) -> None:
    gw = small_queue.gw
    total = 40
    done = threading.Event()
    failures: list[BaseException] = []
    conn = psycopg.connect(gw.conninfo(), password=gw.ci_token, autocommit=True)

    def client() -> None:
        try:
            for n in range(1, total + 1):
                conn.execute(f"select {n} as n /* lost_connection */")
                time.sleep(0.02)
            done.set()
        except BaseException as e:
            failures.append(e)

    worker = threading.Thread(target=client)
    worker.start()
    conninfo = small_queue.store.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as store:
        for _ in range(3):
            # Every other connection to the store: the writer's included.
            store.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
            time.sleep(0.3)
    worker.join(timeout=120)
    conn.close()
    assert done.is_set(), failures
    records = wait_for(
        lambda: (
            found
            if len(found := small_queue.events(kind="statement", q="/* lost_connection */")) >= total
            else []
        )
    )
    numbers = sorted(int(re.search(r"select (\d+) as n", e["statement"]).group(1)) for e in records)  # type: ignore[union-attr]
    assert numbers == list(range(1, total + 1))
    # The writer's held connection was among those terminated: it retried on a new one.
    assert "audit records could not be committed; retrying" in gw.log()
    assert small_queue.store.pgward("audit", "verify").returncode == 0
