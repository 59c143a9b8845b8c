"""The classifier on the real PostgreSQL parser: classes, objects, guardrail findings, cache safety."""

from __future__ import annotations

import pytest

from control_plane.policy.classify import (
    CACHE_FINGERPRINT,
    CACHE_NONE,
    CACHE_TEXT,
    Analysis,
    ObjectRef,
    Unparsable,
    analyze,
    parse_search_path,
)


def one(sql: str) -> Analysis:
    (a,) = analyze(sql)
    return a


def objects(a: Analysis, cls: str | None = None) -> set[str]:
    return {str(n.obj) for n in a.needs if n.obj is not None and (cls is None or n.cls == cls)}


def guardrails(a: Analysis) -> set[str | None]:
    return {f.guardrail for f in a.findings}


@pytest.mark.parametrize(
    ("sql", "cls"),
    [
        ("select 1", "read"),
        ("insert into shop.t values (1)", "write"),
        ("update shop.t set a = 1 where id = 2", "write"),
        ("delete from shop.t where id = 2", "write"),
        ("merge into shop.t using shop.u on t.id = u.id when matched then delete", "write"),
        ("create table shop.t (a int)", "ddl"),
        ("alter table shop.t add column b int", "ddl"),
        ("create index on shop.t (a)", "ddl"),
        ("drop table shop.t", "destructive_ddl"),
        ("truncate shop.t", "destructive_ddl"),
        ("create role x", "admin"),
        ("grant select on shop.t to x", "admin"),
        ("alter system set work_mem = '1MB'", "admin"),
        ("copy shop.t from stdin", "copy_in"),
        ("copy shop.t to stdout", "copy_out"),
        ("do $$ begin end $$", "function_call"),
        ("call shop.p(1)", "function_call"),
        ("select shop.f(1)", "function_call"),
        ("set work_mem = '8MB'", "session"),
        ("reset work_mem", "session"),
        ("show search_path", "session"),
        ("begin", "transaction"),
        ("commit", "transaction"),
        ("vacuum shop.t", "utility"),
        ("analyze shop.t", "utility"),
        ("explain select * from shop.t", "utility"),
    ],
)
def test_every_class(sql: str, cls: str) -> None:
    assert cls in one(sql).classes


def test_explain_analyze_is_decided_as_its_statement() -> None:
    a = one("explain analyze delete from shop.orders where id = 1")
    assert {"utility", "write"} <= a.classes
    assert objects(a, "write") == {"shop.orders"}
    plain = one("explain delete from shop.orders where id = 1")
    assert "write" not in plain.classes and objects(plain, "read") == {"shop.orders"}
    # ANALYZE false only plans; any other spelling runs it.
    assert "write" not in one("explain (analyze false) delete from shop.orders where id = 1").classes
    assert "write" in one("explain (analyze true, buffers) delete from shop.orders where id = 1").classes


def test_tables_through_joins_subqueries_ctes_and_insert_select() -> None:
    a = one(
        "with recent as (select * from shop.orders where created_at > now() - interval '1 day') "
        "select c.name, (select max(amount) from shop.refunds r where r.order_id = o.id) "
        "from recent o join shop.customers c on c.id = o.customer_id "
        "where exists (select 1 from audit.flags f where f.customer_id = c.id)"
    )
    assert objects(a, "read") == {"shop.orders", "shop.refunds", "shop.customers", "audit.flags"}
    b = one("insert into shop.archive select * from shop.orders o, lateral shop.expand(o.id) x")
    assert objects(b, "write") == {"shop.archive"}
    assert objects(b, "read") == {"shop.orders"}
    assert objects(b, "function_call") == {"shop.expand"}


def test_a_cte_name_shadows_only_where_it_is_visible() -> None:
    # Without RECURSIVE, `b` inside the first CTE is the table b, not the later CTE.
    a = one("with a as (select * from b), b as (select 1) select * from a, b")
    assert objects(a, "read") == {"b"}
    r = one("with recursive b as (select 1 union all select * from b) select * from b")
    assert objects(r, "read") == set()


def test_views_and_functions_in_from_are_objects() -> None:
    a = one("select * from shop.order_summary v, shop.top_customers(10) t")
    assert objects(a, "read") == {"shop.order_summary"}
    assert objects(a, "function_call") == {"shop.top_customers"}


def test_quoted_names_that_look_qualified_are_one_identifier() -> None:
    a = one('select * from "shop.customers"')
    (need,) = [n for n in a.needs if n.obj]
    assert need.obj == ObjectRef(None, "shop.customers")
    assert a.unqualified


def test_unicode_identifiers() -> None:
    a = one('select * from shop."Kunden_ü", shop.заказы')
    assert objects(a, "read") == {'shop."Kunden_ü"', "shop.заказы"}


@pytest.mark.parametrize(
    "sql",
    [
        "with d as (delete from shop.orders where id = 1 returning *) select * from d",
        "with u as (update shop.orders set status = 'x' where id = 1 returning id) select count(*) from u",
        "with i as (insert into shop.orders (id) values (1) returning id) select * from i",
    ],
)
def test_data_modifying_cte_is_a_write(sql: str) -> None:
    a = one(sql)
    assert "write" in a.classes and objects(a, "write") == {"shop.orders"}


def test_select_into_and_create_table_as_create_and_write() -> None:
    for sql in (
        "select * into shop.copy from shop.orders",
        "create table shop.copy as select * from shop.orders",
    ):
        a = one(sql)
        assert {"ddl", "write", "read"} <= a.classes
        assert objects(a, "ddl") == {"shop.copy"} and objects(a, "read") == {"shop.orders"}


@pytest.mark.parametrize(
    ("sql", "guardrail"),
    [
        ("delete from shop.orders", "no_unbounded_write"),
        ("update shop.orders set status = 'x'", "no_unbounded_write"),
        ("delete from shop.orders where true", "no_unbounded_write"),
        ("delete from shop.orders where 1 = 1", "no_unbounded_write"),
        ("delete from shop.orders where 'a' = 'a'", "no_unbounded_write"),
        ("update shop.orders set status = 'x' where not false", "no_unbounded_write"),
        ("delete from shop.orders where id = id", "no_unbounded_write"),
        ("delete from shop.orders where id > 5 or 1 = 1", "no_unbounded_write"),
        ("drop database shop", "no_drop_database"),
        ("set role postgres", "no_role_escape"),
        ("reset role", "no_role_escape"),
        ("set session authorization postgres", "no_role_escape"),
        ("select set_config('role', 'postgres', false)", "no_role_escape"),
        ("select pg_catalog.set_config('session_authorization', 'postgres', false)", "no_role_escape"),
        ("set pgward.tenant = 'other'", "no_role_escape"),
        ("select set_config('pgward.tenant', 'other', false)", "no_role_escape"),
        ("copy shop.orders to program 'cat > /tmp/x'", "no_server_file_access"),
        ("copy shop.orders from '/etc/passwd'", "no_server_file_access"),
        ("copy shop.orders to '/tmp/out'", "no_server_file_access"),
        ("select pg_read_file('/etc/passwd')", "no_server_file_access"),
        ("select pg_catalog.pg_read_binary_file('/etc/passwd')", "no_server_file_access"),
        ("select * from pg_ls_dir('.')", "no_server_file_access"),
        ("select lo_import('/etc/passwd')", "no_server_file_access"),
        ("select lo_export(1, '/tmp/x')", "no_server_file_access"),
        ("select * from public.dblink('host=x', 'select 1') as t(a int)", "no_server_file_access"),
        ("select pg_stat_file('postgresql.conf')", "no_server_file_access"),
        ("alter system set work_mem = '1MB'", "no_alter_system"),
    ],
)
def test_guardrails(sql: str, guardrail: str) -> None:
    assert guardrail in guardrails(one(sql))


@pytest.mark.parametrize(
    "sql",
    [
        "delete from shop.orders where id = 1",
        "update shop.orders set status = 'x' where id in (select id from shop.orders limit 1)",
        "delete from shop.orders where 1 = 2 or id = 3",
        "copy shop.orders to stdout",
        "set search_path = shop",
        "select current_setting('role')",
    ],
)
def test_no_false_guardrails(sql: str) -> None:
    assert not [f for f in one(sql).findings if f.only is None]


def test_reset_all_and_discard_all_only_matter_in_pinned_or_read_only_scopes() -> None:
    for sql in ("reset all", "discard all"):
        assert {f.only for f in one(sql).findings} == {"pinned", "read_only"}


@pytest.mark.parametrize(
    "sql",
    [
        "set default_transaction_read_only = off",
        "set transaction read write",
        "set session characteristics as transaction read write",
        "begin read write",
        "start transaction read write",
        "select set_config('default_transaction_read_only', 'off', false)",
        "reset default_transaction_read_only",
    ],
)
def test_read_only_breakers(sql: str) -> None:
    assert "read_only" in {f.only for f in one(sql).findings}


def test_read_only_keepers() -> None:
    for sql in ("begin read only", "set transaction read only", "set default_transaction_read_only = on"):
        assert not one(sql).findings


def test_cache_where_id_equals_1_vs_1_equals_1() -> None:
    # Both would share nothing but their fingerprint's shape; the always-true check looked at constants.
    assert one("delete from shop.orders where 1 = 1").cache == CACHE_TEXT
    assert one("delete from shop.orders where 1 = 2").cache == CACHE_TEXT
    assert one("delete from shop.orders where id = 1").cache == CACHE_FINGERPRINT
    assert one("select * from shop.orders where id = 1").cache == CACHE_FINGERPRINT


def test_cache_set_config_search_path_vs_role() -> None:
    path = one("select set_config('search_path', 'shop', false)")
    role = one("select set_config('role', 'postgres', false)")
    other = one("select set_config('application_name', 'x', false)")
    assert path.cache == CACHE_NONE and path.search_paths == [("shop",)]
    assert role.cache <= CACHE_TEXT and "no_role_escape" in guardrails(role)
    assert other.cache == CACHE_TEXT and not other.findings


def test_set_commands_are_never_fingerprint_cached() -> None:
    assert one("set default_transaction_read_only = on").cache == CACHE_TEXT
    assert one("set search_path = shop, public").cache == CACHE_NONE
    assert one("set search_path = shop, public").search_paths == [("shop", "public")]
    assert one("reset search_path").search_paths == [None]


def test_set_config_needs_constants() -> None:
    assert None in guardrails(one("select set_config(current_user, 'x', false)"))
    assert None in guardrails(one("select set_config('search_path', $1, false)"))
    # pg_dump's form names the setting through pg_settings' key.
    a = one(
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
        "WHERE name = 'restrict_nonsystem_relation_kind'"
    )
    assert not a.findings
    b = one("select set_config(name, 'postgres', false) from pg_settings where name = 'role'")
    assert "no_role_escape" in guardrails(b)


def test_prepare_execute_declare() -> None:
    p = one("prepare p (int) as delete from shop.orders where id = $1")
    assert p.prepare is not None and p.prepare[0] == "p" and "write" in p.prepare[1].classes
    assert p.cache == CACHE_NONE
    e = one("execute p(1)")
    assert e.execute == "p" and e.cache == CACHE_NONE
    d = one("declare c cursor for select * from secret.t")
    assert objects(d, "read") == {"secret.t"}
    assert one("fetch 10 from c").classes == {"read"}


def test_multi_statement_comments_and_dollar_quoting() -> None:
    statements = analyze("select 1; /* ; */ delete from shop.orders -- ;\n; select $x$;drop table t;$x$")
    assert [a.kind for a in statements] == ["SelectStmt", "DeleteStmt", "SelectStmt"]
    assert "destructive_ddl" not in statements[2].classes


def test_unparsable() -> None:
    with pytest.raises(Unparsable, match="syntax error"):
        analyze("selec 1")


def test_functions_known_and_unknown() -> None:
    assert not one("select lower(name), count(*) from shop.customers group by 1").unknown_functions
    assert not one("select pg_catalog.pg_get_userbyid(1), pg_catalog.format_type(23, -1)").unknown_functions
    assert one("select shop.mutate()").unknown_functions == [ObjectRef("shop", "mutate", "function")]
    assert one("select nextval('shop.orders_id_seq')").unknown_functions
    assert None in guardrails(one("select query_to_xml('select * from secret.t', true, false, '')"))


def test_lock_modes() -> None:
    assert objects(one("lock table shop.orders in access share mode"), "read") == {"shop.orders"}
    assert objects(one("lock table shop.orders"), "write") == {"shop.orders"}


def test_search_path_strings() -> None:
    assert parse_search_path('"$user", public') == ("$user", "public")
    assert parse_search_path('Shop, "Mixed Case"') == ("shop", "Mixed Case")
    assert parse_search_path("") == ()
