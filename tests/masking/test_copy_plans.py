"""COPY plans of masked sessions: per output column the masking function and type, and the format
options the data plane needs to rewrite COPY … TO STDOUT output."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy.masking import Catalog, CatalogRelation, resolve
from tests.masking.helpers import CATALOG, masked_engine, person, policy

EMAIL = {"function": "email", "text": None, "first": 0, "last": 0, "type_oid": 25}
PHONE = {"function": "partial", "text": None, "first": 0, "last": 4, "type_oid": 25}
SSN = {"function": "hash", "text": None, "first": 0, "last": 0, "type_oid": 25}
CARD = {"function": "last4", "text": None, "first": 0, "last": 0, "type_oid": 25}


def plans(sql: str, *groups: str) -> list[dict[str, Any]] | None:
    engine, _ = masked_engine(*(groups or ("analysts",)))
    decision = engine.decide(person("alice", *(groups or ("analysts",))), "shop", 1, sql)
    assert decision.action == "allow", decision.message
    answer = decision.answer()
    if "copy" in answer:
        assert answer["cache"] == "text"  # plans hold options that fingerprints normalise away
    return answer.get("copy")


def test_table_copy_masks_by_position() -> None:
    (plan,) = plans("copy shop.customers to stdout") or []
    assert plan == {
        "format": "text",
        "delimiter": "\t",
        "null": "\\N",
        "quote": None,
        "escape": None,
        "header": False,
        "columns": [None, None, EMAIL, PHONE, SSN, CARD],
    }


def test_column_list_and_csv_options() -> None:
    (plan,) = (
        plans(
            "copy shop.customers (ssn, id, email) to stdout with (format csv, header, delimiter ';', "
            "quote '''', escape '\\', null 'NULL', force_quote *)"
        )
        or []
    )
    assert plan == {
        "format": "csv",
        "delimiter": ";",
        "null": "NULL",
        "quote": "'",
        "escape": "\\",
        "header": True,
        "columns": [SSN, None, EMAIL],
    }
    (legacy,) = plans("copy shop.customers (email) to stdout csv header") or []
    assert legacy["format"] == "csv" and legacy["header"] is True and legacy["escape"] == '"'


def test_query_copy_follows_select_rules() -> None:
    (plan,) = (
        plans(
            "copy (select c.id, x.e, c.* from shop.customers c, lateral (select c.phone as e) x) to stdout "
            "(format binary)"
        )
        or []
    )
    assert plan["format"] == "binary"
    assert plan["columns"] == [None, PHONE, None, None, EMAIL, PHONE, SSN, CARD]
    # Views: the view column is masked like the column it shows.
    (view,) = plans("copy (select e from shop.contacts2) to stdout") or []
    assert view["columns"] == [EMAIL]


def test_nothing_masked_means_no_column_plan() -> None:
    (plan,) = plans("copy shop.orders to stdout") or []
    assert plan["columns"] is None
    (query,) = plans("copy (select * from pg_class) to stdout") or []
    assert query["columns"] is None


def test_one_plan_per_copy_in_a_query_string() -> None:
    got = plans("copy shop.orders to stdout; select 1; copy shop.customers (email) to stdout (format csv)")
    assert got is not None and [p["format"] for p in got] == ["text", "csv"]
    assert got[1]["columns"] == [EMAIL]


def test_exempt_sessions_get_no_column_plan() -> None:
    engine, grant = masked_engine("analysts", "dba")
    assert not grant.masking.active
    decision = engine.decide(person("alice", "analysts", "dba"), "shop", 1, "copy shop.customers to stdout")
    assert decision.action == "allow" and "copy" not in decision.answer()


def test_generated_columns_are_left_out_of_a_table_copy() -> None:
    relation = CatalogRelation(
        600,
        "shop",
        "people",
        "r",
        ((1, "id"), (2, "ssn_upper"), (3, "ssn")),
        types=((23, "integer"), (25, "text"), (25, "text")),
        generated=frozenset({"ssn_upper"}),
    )
    catalog = Catalog((*CATALOG.relations, relation))
    engine, grant = masked_engine("analysts")
    engine.set_masks(1, resolve(grant.masking, catalog))
    decision = engine.decide(person("alice", "analysts"), "shop", 1, "copy shop.people to stdout")
    assert decision.answer()["copy"][0]["columns"] == [None, SSN]


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("copy (select lower(email) from shop.customers) to stdout", "lower()"),
        ("copy (select * from shop.customers join shop.orders using (id)) to stdout", "USING"),
        ("copy (select s.* from (select email from shop.customers) s) to stdout", "position"),
        ("copy shop.customers to stdout (format csv, quote '§')", "ASCII"),
        ("copy shop.customers to stdout (encoding 'BIG5')", "encoding"),
        ("copy shop.customers to stdout (format parquet)", "format"),
        ("copy shop.customers to stdout (made_up_option 1)", "made_up_option"),
    ],
)
def test_unmaskable_copies_are_refused(sql: str, says: str) -> None:
    engine, _ = masked_engine("analysts")
    decision = engine.decide(person("alice", "analysts"), "shop", 1, sql)
    assert decision.action == "deny" and decision.sqlstate == "42501"
    assert decision.message is not None and says in decision.message, decision.message


def test_strict_masking_and_copy() -> None:
    """Strict columns are masked at the source in COPY (query) (the rewritten text runs, no data-plane
    work for them); COPY table TO is not rewritten, so its strict columns get a data-plane plan."""
    doc = policy(
        masking=[
            {"columns": ["shop.customers.email"], "function": "email", "strict": True},
            {"columns": ["shop.customers.ssn"], "function": "hash"},
        ],
        rules=[{"allow": ["read", "copy_out"]}],
    )
    engine, _ = masked_engine("analysts", docs=[doc])
    who = person("alice", "analysts")
    answer = engine.decide(
        who, "shop", 1, "copy (select id, email, ssn from shop.customers) to stdout"
    ).answer()
    assert answer["action"] == "rewrite" and "FROM shop.customers) AS" in answer["sql"]
    assert answer["copy"][0]["columns"] == [None, None, SSN]
    table = engine.decide(who, "shop", 1, "copy shop.customers (id, email, ssn) to stdout").answer()
    assert table["action"] == "allow"
    assert table["copy"][0]["columns"] == [None, EMAIL, SSN]
