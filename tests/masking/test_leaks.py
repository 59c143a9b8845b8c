"""Leak analysis in masked sessions: each way around origin-based masking is refused; plain
references (which the data plane masks by origin) are allowed."""

from __future__ import annotations

import pytest

from tests.masking.helpers import masked_engine, person

ALLOWED = [
    "select * from shop.customers",
    "select c.* from shop.customers c",
    "table shop.customers",
    "select email, phone from shop.customers where email like '%@example.com'",
    "select name from shop.customers order by email",
    "select count(*) from shop.customers group by ssn",
    "select s.e from (select email as e from shop.customers) s",
    "with w as (select email from shop.customers) select email from w",
    "select c.email from shop.customers c join shop.orders o on o.customer_id = c.id",
    "select x.email from shop.customers c, lateral (select c.email) x",
    "select exists (select 1 from shop.customers where email = 'x')",
    "select id, email from shop.contacts",
    "select e from shop.contacts2",
    "select ssn from shop.customers_2024",
    "select * from public.notes",
    "select lower(body) from public.notes",
    "select * from pg_class",
    "declare c cursor for select * from shop.customers",
    "update shop.customers set name = name where id = 1 returning email",
    "delete from shop.customers where id = 1 returning ssn",
    "insert into shop.customers (name) values ('x') returning email",
    "copy shop.customers from stdin",
    "copy shop.customers to stdout",
    "copy (select email from shop.customers) to stdout",
    "copy shop.orders to stdout",
    "select 1",
    "set statement_timeout = 1000",
]

REFUSED = [
    ("select lower(email) from shop.customers", "lower()"),
    ("select email::int from shop.customers", "cast"),
    ("select id from shop.customers where ssn::int = 1", "cast"),
    ("select id from shop.customers where to_date(ssn, 'YYYY') is null", "to_date()"),
    ("select email || '' from shop.customers", "expression"),
    ("select string_agg(email, ',') from shop.customers", "string_agg()"),
    ("select row_to_json(c) from shop.customers c", "row_to_json()"),
    ("select to_jsonb(c.*) from shop.customers c", "to_jsonb()"),
    ("select c from shop.customers c", "whole-row"),
    ("select (c).email from shop.customers c", "whole-row"),
    ("select email(c) from shop.customers c", "email()"),
    ("select row(email) from shop.customers", "ROW()"),
    ("select email from shop.customers union select 'x'", "set operation"),
    ("select ssn from shop.customers except select ssn from shop.customers_2024", "set operation"),
    ("with w as (select lower(email) e from shop.customers) select e from w", "lower()"),
    ("select s.x from (select email as e, lower(email) as x from shop.customers) s", "lower()"),
    (
        "with recursive r(e) as (select email from shop.customers union all select e from r) select e from r",
        "set",
    ),
    ("select (select email from shop.customers limit 1)", "sub-select"),
    ("select * from unnest(array(select email from shop.customers))", "unnest()"),
    ("select x.e from shop.customers c, lateral (select lower(c.email) e) x", "lower()"),
    ("select email from shop.customers c full join shop.customers d using (email)", "join column"),
    ("select case when email like 'a%' then 1 end from shop.customers", "expression"),
    ("select * from shop.contacts", "lower()"),
    ("select email_lower from shop.contacts", "lower()"),
    ("select x from shop.casts", "view shop.casts"),
    ("select * into shop.copy from shop.customers", "SELECT … INTO"),
    ("create table shop.copy as select email from shop.customers", "CREATE TABLE AS"),
    ("create view shop.v as select ssn from shop.customers", "CREATE VIEW"),
    ("insert into shop.orders (status) select email from shop.customers", "INSERT"),
    ("update shop.customers set name = email where id = 1", "UPDATE"),
    ("update shop.customers set name = name where id = 1 returning upper(email)", "RETURNING"),
    ("update shop.customers set name = name where id = 1 returning old.email", "old/new"),
    ("copy (select lower(email) from shop.customers) to stdout", "select list of COPY"),
    ("copy (select * from (select email from shop.customers) s) to stdout", "position"),
    ("copy shop.customers to stdout (format csv, delimiter '§')", "ASCII"),
    ("explain select lower(email) from shop.customers", "lower()"),
    ("prepare p as select lower(email) from shop.customers", "lower()"),
    ("select * from pg_stats", "pg_stats"),
    ("select * from shop.created_later", "snapshot"),
    ("do $$ begin raise notice 'x'; end $$", "DO"),
    ("select shop.owner_fn(id) from shop.customers", "function"),
    ("alter table shop.customers alter column ssn type int using ssn::int", "AlterTable"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_plain_references_are_allowed(sql: str) -> None:
    engine, _ = masked_engine("analysts")
    decision = engine.decide(person("alice", "analysts"), "shop", 1, sql)
    assert decision.action == "allow", decision.message


@pytest.mark.parametrize(("sql", "says"), REFUSED)
def test_bypasses_are_refused(sql: str, says: str) -> None:
    engine, _ = masked_engine("analysts")
    decision = engine.decide(person("alice", "analysts"), "shop", 1, sql)
    assert decision.action == "deny" and decision.sqlstate == "42501", sql
    assert decision.message is not None and says in decision.message, decision.message
    # The same statement is fine for an exempt identity: the refusal is masking's.
    exempt, _ = masked_engine("analysts", "dba")
    if "snapshot" not in says and "pg_stats" not in says:
        assert exempt.decide(person("alice", "analysts", "dba"), "shop", 1, sql).action == "allow", sql


def test_masked_statements_are_cached_by_text_only() -> None:
    engine, _ = masked_engine("analysts")
    who = person("alice", "analysts")
    # Fingerprints ignore column aliases, which leak analysis follows through sub-selects.
    assert (
        engine.decide(who, "shop", 1, "select s.x from (select email as x from shop.customers) s").cache
        == "text"
    )
    assert engine.decide(who, "shop", 1, "select id from shop.orders where id = 1").cache == "fingerprint"


def test_execute_of_a_prepared_statement_is_checked_again() -> None:
    engine, _ = masked_engine("analysts")
    who = person("alice", "analysts")
    assert engine.decide(who, "shop", 1, "prepare q as select email from shop.customers").action == "allow"
    assert engine.decide(who, "shop", 1, "execute q").action == "allow"


def test_relations_the_session_creates_are_usable() -> None:
    engine, _ = masked_engine("analysts")
    who = person("alice", "analysts")
    assert (
        engine.decide(who, "shop", 1, "select * from public.scratch").action == "deny"
    )  # not in the snapshot
    assert engine.decide(who, "shop", 1, "create table public.scratch (id int, v text)").action == "allow"
    assert engine.decide(who, "shop", 1, "insert into public.scratch values (1, 'a')").action == "allow"
    assert engine.decide(who, "shop", 1, "select v from public.scratch").action == "allow"
    # In one Query string, too; and still no copying of masked data into them.
    both = "create temp table t (v text); insert into t select name from shop.customers"
    assert engine.decide(who, "shop", 1, both).action == "allow"
    decision = engine.decide(
        who, "shop", 1, "insert into public.scratch (v) select email from shop.customers"
    )
    assert decision.action == "deny" and "INSERT" in (decision.message or "")
