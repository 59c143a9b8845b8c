"""End to end through a real `pgward serve`: the demo policies decide real sessions of psql and psycopg."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from control_plane.demo.shop import READER
from control_plane.policy.documents import PolicyDocument
from control_plane.policy.service import put_documents
from control_plane.store.db import create_engine, create_sessionmaker
from tests.fixtures.postgres import TargetDatabase
from tests.policy.conftest import PolicyGateway


@pytest.fixture
def analyst(policy_gateway: PolicyGateway) -> Iterator[psycopg.Connection]:
    pg = policy_gateway
    with psycopg.connect(pg.conninfo("analyst"), password=pg.tokens["analyst"], autocommit=True) as conn:
        yield conn


def count_orders(target: TargetDatabase) -> int:
    with psycopg.connect(target.superuser_dsn) as conn:
        return conn.execute("select count(*) from shop.orders").fetchone()[0]  # type: ignore[index]


def test_analyst_session_runs_as_reader_read_only(analyst: psycopg.Connection) -> None:
    assert analyst.execute("select current_user").fetchone() == (READER,)
    assert analyst.execute("show default_transaction_read_only").fetchone() == ("on",)
    assert analyst.execute("select current_setting('pgward.user')").fetchone() == ("analyst",)
    assert analyst.execute("select count(*) from shop.orders").fetchone() == (5000,)


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("delete from shop.orders where id = 1", "write on shop.orders"),
        ("update shop.orders set status = 'x' where id = 1", "write on shop.orders"),
        (
            "with d as (delete from shop.orders where id = 1 returning *) select * from d",
            "write on shop.orders",
        ),
        ("select * into shop.stolen from shop.customers", "shop.stolen"),
        ("create table shop.stolen as select * from shop.customers", "shop.stolen"),
        ("copy shop.orders to program 'cat > /tmp/pgward-x'", "PROGRAM"),
        ("set role postgres", "SET ROLE"),
        ("reset role", "RESET ROLE"),
        ("select set_config('role', 'postgres', false)", "set_config('role'"),
        ("select set_config('pgward.user', 'bob', false)", "pgward"),
        ("select 1; delete from shop.orders where id = 1", "write on shop.orders"),
        (
            "/* ok */ select 1; -- ;\n delete /* ; */ from shop.orders where id = $$;$$::int",
            "write on shop.orders",
        ),
        ('select * from "shop.customers"', '"shop.customers"'),
        ("explain analyze delete from shop.orders where id = 1", "write on shop.orders"),
        ("set default_transaction_read_only = off", "read-only"),
        ("begin read write", "read-only"),
        ("select shop_owner_fn()", "not known to be read-only"),
        ("select pg_read_file('/etc/passwd')", "server"),
    ],
)
def test_analyst_refusals_keep_the_session_usable(
    policy_gateway: PolicyGateway, analyst: psycopg.Connection, target_pg: TargetDatabase, sql: str, says: str
) -> None:
    before = count_orders(target_pg)
    with pytest.raises(errors.InsufficientPrivilege) as info:
        analyst.execute(sql)
    assert says in str(info.value), str(info.value)
    diag = info.value.diag
    assert diag.message_detail and diag.message_hint and "access-requests" in diag.message_hint
    assert count_orders(target_pg) == before
    assert analyst.execute("select count(*) from shop.customers").fetchone() == (1000,)
    assert analyst.execute("select current_user").fetchone() == (READER,)


def test_unicode_identifiers_and_dollar_quotes_that_are_allowed(analyst: psycopg.Connection) -> None:
    row = analyst.execute(
        'select $tag$; delete from shop.orders;$tag$ as "Ünïcødé", name from shop.customers limit 1'
    )
    assert row.fetchone() is not None
    with pytest.raises(errors.InsufficientPrivilege, match="заказы"):
        analyst.execute("select * from secret.заказы")


def test_a_view_outside_the_allowed_tables_is_refused(
    policy_gateway: PolicyGateway, analyst: psycopg.Connection, target_pg: TargetDatabase
) -> None:
    with psycopg.connect(target_pg.superuser_dsn, autocommit=True) as su:
        su.execute("create schema if not exists reports")
        su.execute("create or replace view reports.customer_pii as select name, ssn from shop.customers")
        su.execute(
            f"grant usage on schema reports to {READER}; grant select on reports.customer_pii to {READER}"
        )
    with pytest.raises(errors.InsufficientPrivilege, match=r"reports\.customer_pii"):
        analyst.execute("select * from reports.customer_pii")
    with pytest.raises(errors.InsufficientPrivilege, match=r"reports\.customer_pii"):
        analyst.execute("select c.name from shop.customers c join reports.customer_pii p using (name)")


def test_prepared_statements_and_cursors(analyst: psycopg.Connection) -> None:
    analyst.execute("prepare q(int) as select status from shop.orders where id = $1")
    assert analyst.execute("execute q(1)").fetchone() is not None
    with pytest.raises(errors.InsufficientPrivilege):
        analyst.execute("prepare d(int) as delete from shop.orders where id = $1")
    with pytest.raises(errors.InsufficientPrivilege, match="EXECUTE d"):
        analyst.execute("execute d(1)")
    analyst.execute("deallocate q")
    with analyst.transaction():
        analyst.execute("declare c cursor for select id from shop.orders order by id")
        assert analyst.execute("fetch 2 from c").fetchall() == [(1,), (2,)]
        analyst.execute("close c")
    with pytest.raises(errors.InsufficientPrivilege):
        with analyst.transaction():
            analyst.execute("declare c2 cursor for select * from secret.cards")
    # Extended protocol: the Parse is decided.
    assert analyst.execute("select id from shop.orders where id = %s", (7,), prepare=True).fetchone() == (7,)
    with pytest.raises(errors.InsufficientPrivilege):
        analyst.execute("delete from shop.orders where id = %s", (7,))


def test_no_policy_no_session(policy_gateway: PolicyGateway) -> None:
    pg = policy_gateway
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg.conninfo("nobody"), password=pg.tokens["nobody"])
    text = str(info.value)
    assert "no pgward policy grants" in text and '"nobody"' in text and "access-requests" in text


def test_ci_writes_its_schemas_but_destructive_needs_approval(policy_gateway: PolicyGateway) -> None:
    pg = policy_gateway
    with psycopg.connect(pg.conninfo("ci"), password=pg.tokens["ci"], autocommit=True) as conn:
        conn.execute("create table if not exists public.ci_scratch (id int primary key, v text)")
        conn.execute("insert into public.ci_scratch values (1, 'a') on conflict do nothing")
        assert conn.execute("select v from public.ci_scratch where id = 1").fetchone() == ("a",)
        with pytest.raises(errors.InsufficientPrivilege, match="requires approval"):
            conn.execute("drop table public.ci_scratch")
        with pytest.raises(errors.InsufficientPrivilege, match="every row"):
            conn.execute("delete from public.ci_scratch")
        conn.execute("delete from public.ci_scratch where id = 1")


def test_psql_describe_for_a_reader(policy_gateway: PolicyGateway) -> None:
    pg = policy_gateway
    env = {**os.environ, "PGPASSWORD": pg.tokens["analyst"]}
    r = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            pg.conninfo("analyst"),
            "-c",
            r"\d shop.customers",
            "-c",
            r"\dt shop.*",
            "-c",
            r"\dn",
            "-c",
            r"\df shop.*",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "card_number" in r.stdout and "customers_pkey" in r.stdout and "orders" in r.stdout


def test_pg_dump_of_an_allowed_schema_by_a_reader(
    policy_gateway: PolicyGateway, tls_target: TargetDatabase
) -> None:
    # The machine's pg_dump (15) refuses a newer server, so this dumps the PostgreSQL 15 target.
    pg = policy_gateway
    assert tls_target.ca_cert is not None
    pg.gw.put_connection(
        "shop15",
        host="127.0.0.1",
        port=tls_target.port,
        database=tls_target.database,
        username=tls_target.shop.role,
        password=tls_target.shop.password,
        tls_mode="verify-full",
        sslrootcert=tls_target.ca_cert.read_text(),
    )
    pg.gw.put_policy(
        {
            "name": "analysts-read-shop15",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop15"],
            "run_as": READER,
            "rules": [{"allow": ["read", "copy_out"], "tables": ["shop.*"]}],
        }
    )
    env = {**os.environ, "PGPASSWORD": pg.tokens["analyst"]}
    r = subprocess.run(
        ["pg_dump", "--schema=shop", "-d", pg.conninfo("analyst", dbname="shop15")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE shop.customers" in r.stdout and "COPY shop.orders" in r.stdout
    assert r.stdout.count("\n") > 6000  # the rows came through


def test_policy_change_reaches_an_open_session(
    policy_gateway: PolicyGateway, analyst: psycopg.Connection
) -> None:
    pg = policy_gateway
    assert analyst.execute("select count(*) from shop.orders").fetchone() == (5000,)
    pg.gw.put_policy(
        {
            "name": "no-orders",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop"],
            "rules": [{"deny": ["all"], "tables": ["shop.orders"]}],
        }
    )
    try:
        with pytest.raises(errors.InsufficientPrivilege, match='policy "no-orders"'):
            analyst.execute("select count(*) from shop.orders")
        assert analyst.execute("select count(*) from shop.customers").fetchone() == (1000,)
    finally:
        pg.gw.delete_policy("no-orders")
    assert analyst.execute("select count(*) from shop.orders").fetchone() == (5000,)


def test_a_change_made_by_another_process_is_noticed(
    policy_gateway: PolicyGateway, analyst: psycopg.Connection
) -> None:
    # Written straight to the store from this (test) process, as another pgward replica would.
    url = policy_gateway.gw.env["PGWARD_DATABASE_URL"]
    deny = PolicyDocument.model_validate(
        {
            "name": "no-customers",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop"],
            "rules": [{"deny": ["read"], "tables": ["shop.customers"]}],
        }
    )

    async def put() -> None:
        engine = create_engine(url)
        try:
            await put_documents(create_sessionmaker(engine), [deny], author="test")
        finally:
            await engine.dispose()

    assert analyst.execute("select count(*) from shop.customers").fetchone() == (1000,)
    asyncio.run(put())
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                analyst.execute("select count(*) from shop.customers")
            except errors.InsufficientPrivilege as exc:
                assert "no-customers" in str(exc.diag.message_detail)
                break
            assert time.monotonic() < deadline, "the gateway did not notice the change"
            time.sleep(0.2)
    finally:
        policy_gateway.gw.delete_policy("no-customers")


def test_views_are_checked_by_what_they_read(
    policy_gateway: PolicyGateway, target_pg: TargetDatabase
) -> None:
    pg = policy_gateway
    with psycopg.connect(target_pg.superuser_dsn, autocommit=True) as su:
        su.execute(
            "create table if not exists shop.payment_tokens (id int primary key, token text);"
            "insert into shop.payment_tokens values (1, 'tok_secret') on conflict do nothing;"
            "create table if not exists public.secrets (id int primary key, secret text);"
            "insert into public.secrets values (1, 'hunter2') on conflict do nothing;"
            "create or replace view shop.tokens_view as select * from shop.payment_tokens;"
            "create or replace view shop.tokens_view_view as select id from shop.tokens_view;"
            "create or replace view shop.secrets_view as select * from public.secrets;"
            "create or replace view shop.orders_view as select id, status from shop.orders;"
            "create or replace view shop.orders_view_view as select id from shop.orders_view;"
        )
        for obj in (
            "shop.payment_tokens",
            "public.secrets",
            "shop.tokens_view",
            "shop.tokens_view_view",
            "shop.secrets_view",
            "shop.orders_view",
            "shop.orders_view_view",
        ):
            su.execute(f"grant select on {obj} to {READER}")
    # A connection of its own: its catalog is read when the first session starts, after the views exist.
    pg.gw.put_connection(
        "shopviews",
        host="127.0.0.1",
        port=target_pg.port,
        database=target_pg.database,
        username=target_pg.shop.role,
        password=target_pg.shop.password,
        tls_mode="disable",
    )
    pg.gw.put_policy(
        {
            "name": "viewers-read-shop",
            "subjects": {"groups": ["viewers"]},
            "connections": ["shopviews"],
            "run_as": READER,
            "rules": [
                {"name": "no-tokens", "deny": ["read"], "tables": ["shop.payment_tokens"]},
                {"name": "read-shop", "allow": ["read"], "tables": ["shop.*"]},
            ],
        }
    )
    token = pg.identity("viewer", "viewers")
    try:
        with psycopg.connect(
            pg.conninfo("viewer", dbname="shopviews"), password=token, autocommit=True
        ) as conn:
            refusals = [
                ("select * from shop.tokens_view", "view shop.tokens_view reads shop.payment_tokens"),
                ("select * from shop.tokens_view_view", "shop.payment_tokens"),
                ("select * from shop.secrets_view", "view shop.secrets_view reads public.secrets"),
                ("select o.id from shop.orders o join shop.tokens_view t using (id)", "payment_tokens"),
                ("select * from shop.orders where id in (select id from shop.secrets_view)", "secrets"),
            ]
            for _ in range(2):  # the second time may be answered from the data plane's cache
                for sql, says in refusals:
                    with pytest.raises(errors.InsufficientPrivilege) as info:
                        conn.execute(sql)
                    assert says in str(info.value), str(info.value)
                    diag = info.value.diag
                    assert diag.message_detail and diag.message_hint
                    assert conn.execute("select count(*) from shop.orders_view").fetchone() == (5000,)
            with pytest.raises(errors.InsufficientPrivilege, match="denied by policy") as denied:
                conn.execute("select * from shop.tokens_view")
            assert "no-tokens" in str(denied.value.diag.message_detail)
            with pytest.raises(errors.InsufficientPrivilege, match="not allowed for viewer"):
                conn.execute("select * from shop.secrets_view")
            assert conn.execute("select count(*) from shop.orders_view_view").fetchone() == (5000,)
            assert conn.execute("select id, status from shop.orders_view where id = 1").fetchone()
    finally:
        pg.gw.delete_policy("viewers-read-shop")
