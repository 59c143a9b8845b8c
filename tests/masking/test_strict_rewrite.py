"""Strict masking: the pglast rewriter over tricky statement shapes, and the engine's answers."""

from __future__ import annotations

from typing import Any

import pytest
from pglast import parse_sql
from pydantic import ValidationError

from control_plane.policy.documents import PolicyDocument
from control_plane.policy.engine import PolicyEngine, PolicySet, SessionGrant
from control_plane.policy.masking import Catalog, CatalogRelation, MaskSpec, ResolvedMasks, resolve, strictest
from control_plane.policy.rewrite import Unrewritable, rewrite_strict
from tests.masking.helpers import person

TEXT = (25, "text")
CATALOG = Catalog(
    (
        CatalogRelation(
            100,
            "shop",
            "customers",
            "r",
            ((1, "id"), (2, "name"), (3, "email"), (4, "phone"), (5, "ssn"), (6, "card_number")),
            types=((23, "integer"), TEXT, (1043, "character varying(255)"), TEXT, TEXT, TEXT),
        ),
        CatalogRelation(
            200,
            "shop",
            "orders",
            "r",
            ((1, "id"), (2, "customer_id"), (3, "status")),
            types=((23, "integer"), (23, "integer"), TEXT),
        ),
        CatalogRelation(
            300,
            "shop",
            "contacts",
            "v",
            ((1, "id"), (2, "email")),
            "SELECT customers.id, customers.email FROM shop.customers",
            types=((23, "integer"), (1043, "character varying(255)")),
        ),
        # Same name in another schema, without masks: an unqualified name may mean either.
        CatalogRelation(
            500, "public", "customers", "r", ((1, "id"), (2, "note")), types=((23, "integer"), TEXT)
        ),
        CatalogRelation(
            600, "shop", "people", "r", ((1, "id"), (2, "born")), types=((23, "integer"), (1082, "date"))
        ),
    )
)

MASKING: list[dict[str, Any]] = [
    {"columns": ["shop.customers.email"], "function": "email", "strict": True},
    {"columns": ["shop.customers.phone"], "function": "partial", "last": 4, "strict": True},
    {"columns": ["shop.*.ssn"], "function": "hash"},
    {"columns": ["shop.customers.card_number"], "function": "last4"},
    {"columns": ["shop.people.born"], "function": "default", "strict": True},
]


def policy(masking: list[dict[str, Any]] | None = None) -> PolicyDocument:
    return PolicyDocument.model_validate(
        {
            "name": "strict",
            "subjects": {"groups": ["strict"]},
            "connections": ["shop"],
            "rules": [{"allow": ["read", "write"]}],
            "guardrails": {"no_unbounded_write": False},
            "masking": MASKING if masking is None else masking,
        }
    )


def masks() -> ResolvedMasks:
    engine = PolicyEngine(PolicySet.build([policy()]))
    grant = engine.session_scope(person("s", "strict"), "shop")
    assert isinstance(grant, SessionGrant)
    return resolve(grant.masking, CATALOG)


def rw(sql: str, path: tuple[str, ...] = ("shop",)) -> str | None:
    m = masks()
    out = rewrite_strict(sql, m.strict, m.index, path)
    if out is not None:
        parse_sql(out)  # the deparsed text is valid SQL
    return out


SUB = "FROM shop.customers) AS"


def test_documents() -> None:
    with pytest.raises(ValidationError, match="strict masking cannot use hash"):
        policy([{"columns": ["shop.customers.ssn"], "function": "hash", "strict": True}])
    # A strict rule and a stricter non-strict hash on one column: strict, and null (never hash in SQL).
    assert strictest([MaskSpec("email", strict=True), MaskSpec("hash")]) == MaskSpec("null", strict=True)
    assert strictest([MaskSpec("partial", first=1, strict=True), MaskSpec("email")]).strict
    assert not strictest([MaskSpec("email"), MaskSpec("hash")]).strict


def test_resolution() -> None:
    m = masks()
    assert set(m.strict) == {("shop", "customers"), ("shop", "contacts"), ("shop", "people")}
    assert set(m.strict[("shop", "customers")].masked) == {"email", "phone"}
    # The view's plain column inherits the strict mask of the column it shows.
    assert set(m.strict[("shop", "contacts")].masked) == {"email"}
    assert m.index.relations[("shop", "customers")].strict == {"email", "phone"}


def test_plain_select_keeps_alias_and_non_strict_columns() -> None:
    out = rw("select c.email, c.ssn from shop.customers c where c.email = 'a@b.c'")
    assert out is not None
    assert out.startswith("SELECT c.email, c.ssn FROM (SELECT id, name, CASE WHEN email IS NULL")
    assert f"{SUB} c WHERE c.email = 'a@b.c'" in out
    # ssn and card_number are not strict: plain columns, so their origin (and data-plane mask) survive.
    assert ", ssn, card_number FROM shop.customers" in out
    assert "varchar(255)" in out  # the column keeps its type


def test_no_strict_relation_is_not_rewritten() -> None:
    assert rw("select id, status from shop.orders where status = 'x'") is None
    assert rw("select 1") is None
    assert rw("set search_path = shop") is None


def test_unaliased_schema_qualified_references() -> None:
    out = rw(
        "select shop.customers.email, customers.id from shop.customers where shop.customers.phone like '5%'"
    )
    assert out is not None
    assert out.startswith("SELECT customers.email, customers.id FROM (SELECT")
    assert f"{SUB} customers WHERE customers.phone LIKE '5%'" in out


def test_unqualified_name_and_search_path() -> None:
    out = rw("select email from customers", ("shop",))
    assert out is not None and "FROM customers) AS customers" in out
    # public.customers has no masks but shop.customers does: the name may mean either, so refuse.
    with pytest.raises(Unrewritable, match="qualify the name"):
        rw("select * from customers", ("public", "shop"))
    assert rw("select * from customers", ("public",)) is None


def test_self_join_and_join_on_masked_column() -> None:
    out = rw(
        "select a.id, b.id from shop.customers a join shop.customers b on a.email = b.email "
        "join shop.orders o on o.customer_id = a.id"
    )
    assert out is not None
    assert out.count(SUB) == 2
    assert f"{SUB} a INNER JOIN (SELECT" in out and f"{SUB} b ON a.email = b.email" in out
    assert "INNER JOIN shop.orders AS o" in out


def test_cte_names_shadow_tables() -> None:
    # `customers` is the CTE in the outer query; inside the CTE, shop.customers is rewritten.
    out = rw("with customers as (select email from shop.customers) select email from customers")
    assert out is not None
    assert out.count(SUB) == 1 and out.endswith("SELECT email FROM customers")
    # A non-recursive CTE does not see itself: inside, `customers` is the table.
    out = rw("with customers as (select email from customers) select * from customers")
    assert out is not None and out.count("FROM customers) AS customers") == 1
    # A recursive CTE does.
    out = rw(
        "with recursive customers(email) as (select 'x' union all select email from customers where false) "
        "select * from customers"
    )
    assert out is None


def test_subqueries_lateral_and_set_operations() -> None:
    out = rw(
        "select * from shop.orders o, "
        "lateral (select email from shop.customers c where c.id = o.customer_id) x "
        "where exists (select 1 from shop.customers d where d.phone = '1') "
        "union select 1, 2, 3, email from shop.contacts"
    )
    assert out is not None
    assert out.count(SUB) == 2
    assert "FROM shop.contacts) AS contacts" in out


def test_views_are_rewritten_like_tables() -> None:
    out = rw("select email from shop.contacts where email like 'a%'")
    assert out is not None and "FROM shop.contacts) AS contacts WHERE email LIKE 'a%'" in out


def test_only_tablesample_and_column_aliases() -> None:
    out = rw("select x from only shop.customers as c(i, n, x) tablesample system (50) repeatable (1)")
    assert out is not None
    assert "FROM ONLY shop.customers TABLESAMPLE system(50) REPEATABLE (1)) AS c (i, n, x)" in out


def test_non_text_columns_get_typed_defaults() -> None:
    out = rw("select born from shop.people")
    assert out is not None and "CAST('1970-01-01' AS date)" in out


def test_dml_target_reads_are_masked_in_place() -> None:
    out = rw("delete from shop.customers c where c.email = 'a@b.c' and name = 'x' returning email, ssn")
    assert out is not None
    assert out.startswith("DELETE FROM shop.customers AS c WHERE CASE WHEN c.email IS NULL")
    # RETURNING keeps the column's name; ssn (not strict) stays a plain column.
    assert out.endswith("END AS email, ssn")
    out = rw("update shop.customers set email = 'new@x.y', name = phone where phone like '%1'")
    assert out is not None
    assert out.startswith("UPDATE shop.customers SET email = 'new@x.y', name = CASE WHEN phone IS NULL")
    # A sub-select that reads the target's column from outside.
    out = rw(
        "update shop.customers c set name = 'x' where exists "
        "(select 1 from shop.orders o where o.customer_id = c.id and c.email like 'a%')"
    )
    assert out is not None and "AND CASE WHEN c.email IS NULL" in out
    # The inner query's own column of the same name is not the target's.
    out = rw("delete from shop.customers where id in (select id from shop.contacts where email = 'x')")
    assert out is not None
    assert out.startswith("DELETE FROM shop.customers WHERE id IN (SELECT id FROM (SELECT")
    assert "AS contacts WHERE email = 'x')" in out


def test_dml_read_side_is_rewritten() -> None:
    out = rw("insert into shop.orders (customer_id, status) select id, email from shop.customers")
    assert out is not None and SUB in out
    out = rw("update shop.orders o set status = c.email from shop.customers c where c.id = o.customer_id")
    assert out is not None and f"{SUB} c WHERE" in out


def test_unresolvable_target_reads_are_refused() -> None:
    with pytest.raises(Unrewritable, match="whole-row"):
        rw("delete from shop.customers c where c = c")
    with pytest.raises(Unrewritable, match="reads every column"):
        rw("delete from shop.customers c where (c.*) is not null")
    with pytest.raises(Unrewritable, match="cannot tell whether email"):
        rw(
            "delete from shop.customers where exists "
            "(select 1 from generate_series(1, 2) g where email = 'x')"
        )


def test_several_statements() -> None:
    out = rw("select 1; select email from shop.customers")
    assert out is not None
    assert out.startswith("SELECT 1;\nSELECT email FROM (SELECT")


def engine() -> tuple[PolicyEngine, SessionGrant]:
    eng = PolicyEngine(PolicySet.build([policy()]))
    grant = eng.session_scope(person("s", "strict"), "shop", search_path="shop")
    assert isinstance(grant, SessionGrant)
    eng.open_session(1, grant)
    eng.set_masks(1, resolve(grant.masking, CATALOG))
    return eng, grant


def test_engine_answers_rewrite_and_allows_functions_over_strict_columns() -> None:
    eng, grant = engine()
    who = grant.identity
    d = eng.decide(who, "shop", 1, "select lower(email), email::int from shop.customers where phone = '1'")
    answer = d.answer()
    assert answer["action"] == "rewrite", answer
    assert answer["cache"] == "text"
    assert "FROM shop.customers) AS customers" in answer["sql"]
    # Non-strict masked columns keep leak analysis: a function over ssn is refused.
    d = eng.decide(who, "shop", 1, "select lower(ssn) from shop.customers")
    assert d.action == "deny" and "ssn" in (d.message or "")
    # The DML target's own strict columns keep their taint: they cannot be copied in clear.
    d = eng.decide(who, "shop", 1, "update shop.customers set name = lower(email) where id = 1")
    assert d.action == "deny"
    # Statements that read nothing strict are answered as before.
    assert eng.decide(who, "shop", 1, "select status from shop.orders").answer()["action"] == "allow"
    # What the rewriter cannot make safe is refused.
    d = eng.decide(who, "shop", 1, "delete from shop.customers c where c = c")
    assert d.action == "deny" and d.sqlstate == "42501"


def test_recursive_with_forward_references_are_followed() -> None:
    """In WITH RECURSIVE a CTE may name a later one. Leak analysis must see that `customers` inside
    `a` is the CTE (clear ssn renamed to email), not the table whose email is strict."""
    eng, grant = engine()
    sql = (
        "with recursive a as (select lower(t.email) as v from customers t), "
        "customers as (select ssn as email from shop.customers) select v from a"
    )
    d = eng.decide(grant.identity, "shop", 1, sql)
    assert d.action == "deny" and "ssn" in (d.message or ""), d.explain()
    # The rewriter agrees that `customers` is the CTE there, and rewrites the table inside it.
    out = rw(sql)
    assert out is not None and out.count(SUB) == 1
    assert "FROM customers AS t" in out


def test_returning_star_of_a_strict_target() -> None:
    out = rw("delete from shop.customers c where id = 1 returning c.*, email")
    assert out is not None and out.startswith("DELETE FROM shop.customers AS c WHERE id = 1 RETURNING c.*, ")
    out = rw("update shop.customers set name = 'x' where id = 1 returning old.email, new.phone")
    assert out is not None and "CASE WHEN old.email IS NULL" in out and "CASE WHEN new.phone IS NULL" in out


def test_target_reads_respect_nested_cte_names() -> None:
    # `contacts` is a CTE without an email column here, so `email` is the target's: PostgreSQL
    # resolves it outward. pgward cannot model the CTE's columns, so it refuses rather than guess.
    sql = (
        "delete from shop.customers where exists "
        "(with contacts as (select 1 as k) select 1 from contacts where email = 'x')"
    )
    with pytest.raises(Unrewritable, match="cannot tell whether email"):
        rw(sql)
    # The DML's own WITH is visible inside its WHERE too.
    sql = (
        "with contacts as (select 1 as k) delete from shop.customers "
        "where exists (select 1 from contacts where email = 'x')"
    )
    with pytest.raises(Unrewritable, match="cannot tell whether email"):
        rw(sql)
    # Qualified references stay resolvable.
    out = rw(
        "delete from shop.customers c where exists "
        "(with w as (select 1 as k) select 1 from w where c.email = 'x')"
    )
    assert out is not None and "CASE WHEN c.email IS NULL" in out


def test_schema_qualified_references_inside_target_reads() -> None:
    # The inner relation is public.customers: shop.customers.email is the target's (outer) column.
    out = rw(
        "delete from shop.customers where exists "
        "(select 1 from public.customers where shop.customers.email = 'x')"
    )
    assert out is not None and "CASE WHEN shop.customers.email IS NULL" in out
    # An aliased inner relation never answers to a schema-qualified name either.
    out = rw(
        "delete from shop.customers where exists "
        "(select 1 from shop.customers c2 where shop.customers.email = c2.email)"
    )
    assert out is not None and "CASE WHEN shop.customers.email IS NULL" in out
    with pytest.raises(Unrewritable, match=r"cannot tell whether shop\.customers\.email"):
        rw(
            "delete from shop.customers where exists "
            "(select 1 from customers where shop.customers.email = 'x')",
            ("public", "shop"),
        )


def test_shortened_references_cannot_change_meaning() -> None:
    with pytest.raises(Unrewritable, match="give them aliases"):
        rw(
            "select 1 from shop.customers where exists "
            "(select 1 from public.customers where public.customers.id = shop.customers.id)"
        )
