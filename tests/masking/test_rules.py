"""Masking rules: validation, resolution to (table OID, attnum), strictness, tags, the key, the cache."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from control_plane.connections.service import ConnectionTarget
from control_plane.policy.engine import PolicyEngine, PolicySet, Refusal
from control_plane.policy.masking import Catalog, CatalogCache, MaskSpec, mask_key, resolve, strictest
from tests.masking.helpers import CATALOG, MASKING, masked_engine, person, policy


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"columns": ["shop.customers"], "function": "email"}, "schema.table.column"),
        ({"columns": ["shop.customers.email"], "function": "partial"}, "first and/or last"),
        ({"columns": ["shop.customers.email"], "function": "email", "text": "x"}, "redact"),
        ({"columns": ["shop.customers.email"], "function": "hash", "last": 4}, "partial"),
        ({"function": "null"}, "at least one column pattern or tag"),
        ({"columns": ["shop.customers.email"], "function": "scramble"}, "function"),
    ],
)
def test_invalid_rules_are_rejected(rule: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        policy(masking=[rule])


def test_rules_resolve_to_oids_and_attnums() -> None:
    _, grant = masked_engine("analysts")
    masks = resolve(grant.masking, CATALOG).masks
    assert masks[(100, 3)] == MaskSpec("email")
    assert masks[(100, 4)] == MaskSpec("partial", last=4)
    assert masks[(100, 5)] == MaskSpec("hash")
    assert masks[(100, 6)] == MaskSpec("last4")  # by tag
    assert (100, 1) not in masks and (100, 2) not in masks and (500, 2) not in masks
    # A partition of a masked table, and a view's plain column, are masked like their source.
    assert masks[(400, 2)] == MaskSpec("hash")
    assert masks[(300, 2)] == MaskSpec("email")
    assert masks[(301, 1)] == MaskSpec("email")  # a view over that view
    assert (300, 3) not in masks  # computed: selecting it is refused instead (test_leaks)


def test_exempt_groups_see_clear() -> None:
    _, grant = masked_engine("analysts", "dba")
    assert not grant.masking.active
    _, analyst = masked_engine("analysts")
    assert analyst.masking.active and analyst.masking.key() != grant.masking.key()


def test_the_strictest_function_wins() -> None:
    assert strictest([MaskSpec("email"), MaskSpec("hash"), MaskSpec("partial", last=4)]) == MaskSpec("hash")
    assert strictest([MaskSpec("redact", text="x"), MaskSpec("null")]) == MaskSpec("null")
    assert strictest([MaskSpec("partial", first=2, last=2), MaskSpec("partial", last=1)]) == MaskSpec(
        "partial", last=1
    )
    second = policy(
        name="second",
        masking=[{"columns": ["shop.customers.email"], "function": "redact", "text": "xxx"}],
        column_tags={},
    )
    _, grant = masked_engine("analysts", docs=[policy(), second])
    assert resolve(grant.masking, CATALOG).masks[(100, 3)] == MaskSpec("redact", text="xxx")


def test_a_rule_naming_an_undefined_tag_refuses_the_session() -> None:
    doc = policy(column_tags={})
    engine = PolicyEngine(PolicySet.build([doc]))
    refusal = engine.session_scope(person("alice", "analysts"), "shop")
    assert isinstance(refusal, Refusal) and refusal.sqlstate == "28000"
    assert "pii.card" in refusal.message


def test_tags_of_other_policies_on_the_connection_apply() -> None:
    tags_only = policy(
        name="tags",
        subjects={"groups": ["nobody"]},
        masking=[],
        column_tags={"shop.customers.card_number": ["pii.card"]},
    )
    mine = policy(column_tags={})
    engine = PolicyEngine(PolicySet.build([mine, tags_only]))
    grant = engine.session_scope(person("alice", "analysts"), "shop")
    assert not isinstance(grant, Refusal)
    assert resolve(grant.masking, CATALOG).masks[(100, 6)] == MaskSpec("last4")


def test_mask_key_is_per_deployment() -> None:
    a = mask_key(b"secret-one")
    assert a == mask_key(b"secret-one") and a != mask_key(b"secret-two")
    assert len(bytes.fromhex(a)) == 32


def test_catalog_cache_ttl_and_invalidation() -> None:
    loads: list[str] = []

    async def loader(target: ConnectionTarget) -> Catalog:
        loads.append(target.name)
        return Catalog(CATALOG.relations)

    target = ConnectionTarget("shop", "127.0.0.1", 5432, "shop", "owner", None, "disable", None)

    async def run() -> None:
        cache = CatalogCache(ttl=60, loader=loader)
        first = await cache.get(target)
        assert await cache.get(target) is first
        cache.invalidate("shop")
        assert await cache.get(target) is not first
        expired = CatalogCache(ttl=0, loader=loader)
        await expired.get(target)
        await expired.get(target)

    asyncio.run(run())
    assert loads == ["shop"] * 4


def test_the_digest_changes_with_the_catalog() -> None:
    _, grant = masked_engine("analysts")
    one = resolve(grant.masking, CATALOG)
    fewer = Catalog(tuple(r for r in CATALOG.relations if r.name != "customers_2024"))
    assert resolve(grant.masking, fewer).digest != one.digest
    assert MASKING  # the helpers' rules are what these tests resolve
