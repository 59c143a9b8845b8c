"""The engine: session scopes, decisions with policy and rule, search_path tracking, cache safety."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.demo.run import DEMO_POLICIES
from control_plane.identity.credentials import Identity
from control_plane.policy.documents import PolicyDocument, json_schema
from control_plane.policy.engine import PolicyEngine, PolicySet, Refusal, SessionGrant
from control_plane.policy.files import load


def person(name: str, *groups: str) -> Identity:
    return Identity(f"person:{name}", name, tuple(groups), "test", "person", "oidc")


def service(name: str, *groups: str) -> Identity:
    return Identity(f"service:{name}", name, tuple(groups), "pgward", "service", "api_key")


ALICE = person("alice", "analysts")
BOB = person("bob", "dba", "admins")
CI = service("ci", "ci")
AGENT = service("agent", "agents")
MALLORY = person("mallory", "strangers")


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine(
        PolicySet.build(load([DEMO_POLICIES]).policies.values(), 1), public_url="https://pgward.test"
    )


def opened(engine: PolicyEngine, identity: Identity, session_id: int = 1, **kw: str) -> SessionGrant:
    grant = engine.session_scope(identity, "shop", login_role="shop_owner", **kw)
    assert isinstance(grant, SessionGrant), grant
    engine.open_session(session_id, grant)
    return grant


def decide(engine: PolicyEngine, identity: Identity, sql: str, session_id: int = 1) -> tuple[str, str, str]:
    d = engine.decide(identity, "shop", session_id, sql)
    return d.action, d.cache, f"{d.message} | {d.detail} | {d.policy}/{d.rule}"


def test_no_policy_no_session(engine: PolicyEngine) -> None:
    refusal = engine.session_scope(MALLORY, "shop")
    assert isinstance(refusal, Refusal) and refusal.sqlstate == "28000"
    assert "mallory" in refusal.message and "shop" in refusal.message
    assert "strangers" in (refusal.detail or "")
    assert refusal.hint == "request access at https://pgward.test/v1/access-requests (connection shop)"
    assert isinstance(engine.session_scope(ALICE, "other-db"), Refusal)


def test_session_scope_setup_sql(engine: PolicyEngine) -> None:
    alice = opened(engine, ALICE)
    assert alice.read_only and alice.run_as == "shop_reader"
    assert alice.setup_sql() == (
        "SET search_path = \"public\"; SET ROLE \"shop_reader\"; "
        "SELECT pg_catalog.set_config('pgward.user', 'alice', false); "
        "SET default_transaction_read_only = on"
    )
    bob = opened(engine, BOB, 2)
    assert not bob.read_only and bob.run_as is None and bob.setup_sql() == "SET search_path = \"public\""


def test_quoting_in_setup_sql() -> None:
    doc = PolicyDocument.model_validate(
        {
            "name": "q",
            "subjects": {"users": ["o'brien"]},
            "connections": ["shop"],
            "run_as": 'we"ird',
            "session_context": {"who": "{identity.username}\\x"},
            "rules": [{"allow": ["read"]}],
        }
    )
    grant = PolicyEngine(PolicySet.build([doc])).session_scope(person("o'brien"), "shop")
    assert isinstance(grant, SessionGrant)
    assert grant.setup_sql() == (
        "SET search_path = \"public\"; "
        "SET ROLE \"we\"\"ird\"; SELECT pg_catalog.set_config('pgward.who', E'o''brien\\\\x', false); "
        "SET default_transaction_read_only = on"
    )


def test_missing_claim_refuses_the_session() -> None:
    doc = PolicyDocument.model_validate(
        {
            "name": "rls",
            "subjects": {"groups": ["g"]},
            "connections": ["*"],
            "session_context": {"tenant": "{claims.tenant}"},
            "rules": [{"allow": ["read"]}],
        }
    )
    refusal = PolicyEngine(PolicySet.build([doc])).session_scope(person("x", "g"), "shop")
    assert isinstance(refusal, Refusal) and "claim 'tenant'" in refusal.message


def test_analyst_reads_but_cannot_write(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    assert decide(engine, ALICE, "select * from shop.orders o join shop.customers c on c.id = o.customer_id")[
        :2
    ] == ("allow", "fingerprint")
    d = engine.decide(ALICE, "shop", 1, "select * from shop.orders")
    assert (d.policy, d.rule, d.classes, d.tables) == (
        "analysts-read-shop",
        "read-shop",
        ["read"],
        ["shop.orders"],
    )
    for sql in (
        "delete from shop.orders where id = 1",
        "with d as (delete from shop.orders where id = 1 returning *) select * from d",
        "select * into shop.copy from shop.orders",
        "create table shop.copy as select * from shop.orders",
        "select * from secret.cards",
        'select * from "shop.customers"',
        "select shop.mutate()",
        "explain analyze delete from shop.orders where id = 1",
        "set default_transaction_read_only = off",
        "begin read write",
        "reset all",
        "discard all",
    ):
        action, _, why = decide(engine, ALICE, sql)
        assert action == "deny", (sql, why)


def test_denial_names_policy_rule_and_hint(engine: PolicyEngine) -> None:
    opened(engine, CI)
    d = engine.decide(CI, "shop", 1, "drop table shop.orders")
    assert d.action == "deny" and d.sqlstate == "42501"
    assert "requires approval" in (d.message or "") and "approval" in (d.message or "")
    assert d.detail == (
        'approval required by policy "ci-deploy", rule "destructive-needs-approval" '
        "(require_approval destructive_ddl)"
    )
    assert d.hint and "/v1/access-requests" in d.hint
    g = engine.decide(CI, "shop", 1, "delete from shop.orders")
    assert g.rule == "guardrail:no_unbounded_write" and "every row" in (g.message or "")


def test_ci_reads_writes_ddl_in_its_schemas(engine: PolicyEngine) -> None:
    opened(engine, CI)
    for sql in (
        "insert into public.t select * from shop.orders",
        "create table public.t (a int)",
        "update shop.orders set status = 'paid' where id = 3",
        "copy shop.orders from stdin",
        "create temp table scratch (a int)",
    ):
        assert decide(engine, CI, sql)[0] == "allow", sql
    assert decide(engine, CI, "insert into secret.t values (1)")[0] == "deny"
    assert decide(engine, CI, "create schema other")[0] == "deny"  # table-less DDL needs an unrestricted rule
    assert decide(engine, CI, "do $$ begin end $$")[0] == "deny"


def test_agent_reads_shop_only(engine: PolicyEngine) -> None:
    opened(engine, AGENT)
    assert decide(engine, AGENT, "select count(*) from shop.customers")[0] == "allow"
    assert decide(engine, AGENT, "copy shop.customers to stdout")[0] == "deny"


def test_bob_everything_but_destructive(engine: PolicyEngine) -> None:
    opened(engine, BOB)
    assert decide(engine, BOB, "create role x")[0] == "allow"
    assert decide(engine, BOB, "select * from anything.at_all")[0] == "allow"
    assert decide(engine, BOB, "truncate shop.orders")[0] == "deny"
    assert decide(engine, BOB, "drop schema shop cascade")[0] == "deny"


def test_role_escape_everywhere(engine: PolicyEngine) -> None:
    opened(engine, BOB)
    for sql in (
        "set role postgres",
        "reset role",
        "select set_config('role','postgres',false)",
        "set session authorization postgres",
    ):
        assert decide(engine, BOB, sql)[0] == "deny", sql
    # Without a pinned role or context RESET ALL is harmless for bob.
    assert decide(engine, BOB, "reset all")[0] == "allow"


def test_multi_statement_refused_whole(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    d = engine.decide(ALICE, "shop", 1, "select 1; delete from shop.orders where id = 1")
    assert d.action == "deny" and "statement 2 of 2" in (d.detail or "")


def test_catalog_queries_for_readers(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    for sql in (
        "select c.relname from pg_catalog.pg_class c "
        "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "where pg_catalog.pg_table_is_visible(c.oid)",
        "select * from information_schema.columns where table_schema = 'shop'",
        "select name, setting from pg_settings",
        "select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a",
    ):
        assert decide(engine, ALICE, sql)[0] == "allow", sql


def test_unqualified_names_follow_the_session_search_path(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    action, _, why = decide(engine, ALICE, "select * from orders")
    assert action == "deny" and "unqualified" in why
    assert decide(engine, ALICE, "set search_path = shop")[:2] == ("allow", "none")
    # The session may now be on either path (a rolled-back SET reverts it): both must allow.
    assert decide(engine, ALICE, "select * from orders")[0] == "deny"
    opened(engine, ALICE, 2, search_path="shop")
    assert decide(engine, ALICE, "select * from orders", 2)[0] == "allow"


def test_search_path_divergence_stops_caching_for_the_scope(engine: PolicyEngine) -> None:
    invalidations: list[int] = []
    engine.on_cache_unsafe.append(lambda: invalidations.append(1))
    opened(engine, CI, 1)
    opened(engine, CI, 2)
    assert decide(engine, CI, "select * from shop.orders", 2)[1] == "fingerprint"
    assert decide(engine, CI, "select count(*) from shop.orders", 2)[1] == "fingerprint"
    decide(engine, CI, "select set_config('search_path', 'shop', false)", 1)
    assert invalidations == [1]
    # Session 2 never changed its path, but it shares the data plane's cache with session 1.
    assert decide(engine, CI, "select count(*) from shop.orders", 2)[1] == "none"
    assert decide(engine, CI, "select * from shop.orders", 2)[1] == "fingerprint"  # qualified, no functions
    engine.close_session(1)
    assert decide(engine, CI, "select count(*) from shop.orders", 2)[1] == "fingerprint"


def test_prepare_execute(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    assert decide(engine, ALICE, "prepare ok as select * from shop.orders")[0] == "allow"
    assert decide(engine, ALICE, "execute ok")[0] == "allow"
    assert decide(engine, ALICE, "prepare bad as delete from shop.orders where id = 1")[0] == "deny"
    assert decide(engine, ALICE, "execute bad")[0] == "deny"
    assert decide(engine, ALICE, "prepare p2 as select 1; execute p2")[0] == "allow"
    assert decide(engine, ALICE, "deallocate ok")[0] == "allow"
    assert decide(engine, ALICE, "execute ok")[0] == "deny"


def test_policy_change_applies_to_open_sessions(engine: PolicyEngine) -> None:
    opened(engine, ALICE)
    assert decide(engine, ALICE, "select * from shop.orders")[0] == "allow"
    deny = PolicyDocument.model_validate(
        {
            "name": "no-orders",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop"],
            "rules": [{"deny": ["all"], "tables": ["shop.orders"]}],
        }
    )
    docs = [*load([DEMO_POLICIES]).policies.values(), deny]
    engine.replace(PolicySet.build(docs, 2))
    action, _, why = decide(engine, ALICE, "select * from shop.orders")
    assert action == "deny" and 'policy "no-orders"' in why
    engine.replace(PolicySet.build((), 3))
    assert decide(engine, ALICE, "select 1")[0] == "deny"


def test_guardrail_switched_off_only_when_every_policy_agrees() -> None:
    loose = PolicyDocument.model_validate(
        {
            "name": "loose",
            "subjects": {"groups": ["ops"]},
            "connections": ["*"],
            "rules": [{"allow": ["all"]}],
            "guardrails": {"no_unbounded_write": False},
        }
    )
    strict = PolicyDocument.model_validate(
        {
            "name": "strict",
            "subjects": {"groups": ["audit"]},
            "connections": ["*"],
            "rules": [{"allow": ["read"]}],
        }
    )
    engine = PolicyEngine(PolicySet.build([loose, strict]))
    ops = person("o", "ops")
    opened(engine, ops)
    assert decide(engine, ops, "delete from t.t")[0] == "allow"
    both = person("b", "ops", "audit")
    opened(engine, both, 2)
    assert decide(engine, both, "delete from t.t", 2)[0] == "deny"


def test_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="exactly one of allow, deny, require_approval"):
        PolicyDocument.model_validate(
            {
                "name": "x",
                "subjects": {"groups": ["g"]},
                "connections": ["c"],
                "rules": [{"allow": ["read"], "deny": ["write"]}],
            }
        )
    with pytest.raises(ValueError, match=r"schema\.name"):
        PolicyDocument.model_validate(
            {
                "name": "x",
                "subjects": {"groups": ["g"]},
                "connections": ["c"],
                "rules": [{"allow": ["read"], "tables": ["orders"]}],
            }
        )
    with pytest.raises(ValueError, match="data_modifying_cte_is_write"):
        PolicyDocument.model_validate(
            {
                "name": "x",
                "subjects": {"groups": ["g"]},
                "connections": ["c"],
                "rules": [{"allow": ["read"]}],
                "guardrails": {"data_modifying_cte_is_write": False},
            }
        )


def test_published_schema_is_current() -> None:
    import json

    published = Path(__file__).resolve().parents[2] / "docs" / "policy.schema.json"
    assert json.loads(published.read_text()) == json_schema(), (
        "regenerate: pgward policy schema -o docs/policy.schema.json"
    )


# --- property: nothing is ever allowed by a deny-all policy ---------------------------------------------

_TABLES = st.sampled_from(
    ["shop.orders", "orders", '"shop.orders"', "public.t", "pg_catalog.pg_class", "x.y"]
)
_EXPR = st.sampled_from(
    ["1", "id", "true", "1 = 1", "'a' = 'a'", "id = 1", "lower(name)", "shop.f(id)", "$1"]
)
_FRAGMENTS = st.one_of(
    st.builds(lambda t, e: f"select {e} from {t}", _TABLES, _EXPR),
    st.builds(lambda t, e: f"delete from {t} where {e}", _TABLES, _EXPR),
    st.builds(lambda t, e: f"update {t} set a = {e}", _TABLES, _EXPR),
    st.builds(lambda t: f"insert into {t} select * from {t}", _TABLES),
    st.builds(lambda t: f"with d as (delete from {t} returning *) select * from d", _TABLES),
    st.builds(lambda t: f"copy {t} to stdout", _TABLES),
    st.builds(lambda t: f"explain analyze delete from {t}", _TABLES),
    st.builds(lambda t: f"create table {t} (a int)", _TABLES),
    st.builds(lambda t: f"drop table {t}", _TABLES),
    st.builds(lambda t: f"lock table {t} in access share mode", _TABLES),
    st.builds(lambda e: f"select set_config('search_path', 'shop', false), {e}", _EXPR),
    st.sampled_from(
        [
            "set role postgres",
            "reset all",
            "do $$ begin end $$",
            "prepare p as select 1",
            "execute p",
            "vacuum",
            "grant all on all tables in schema shop to public",
            "select pg_read_file('/etc/passwd')",
            "fetch all from c",
            "values (1)",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAGMENTS, min_size=1, max_size=5), st.booleans())
def test_deny_all_never_allows(statements: list[str], comment: bool) -> None:
    deny_all = PolicyDocument.model_validate(
        {
            "name": "deny-all",
            "subjects": {"groups": ["g"]},
            "connections": ["*"],
            "rules": [{"deny": ["all"]}],
        }
    )
    engine = PolicyEngine(PolicySet.build([deny_all]))
    identity = person("p", "g")
    grant = engine.session_scope(identity, "shop")
    assert isinstance(grant, SessionGrant)
    engine.open_session(1, grant)
    sql = ("/* x */ " if comment else "") + "; ".join(statements)
    assert engine.decide(identity, "shop", 1, sql).action == "deny"
    # And with no policy at all there is no session to decide in.
    assert isinstance(PolicyEngine().session_scope(identity, "shop"), Refusal)


def test_views_need_what_they_read(engine: PolicyEngine) -> None:
    from control_plane.policy.masking import Catalog, CatalogRelation

    def catalog(tokens_view: str) -> Catalog:
        return Catalog(
            (
                CatalogRelation(1, "shop", "orders", "r", ((1, "id"),)),
                CatalogRelation(2, "secret", "tokens", "r", ((1, "id"),)),
                CatalogRelation(3, "shop", "tokens_view", "v", ((1, "id"),), tokens_view),
                CatalogRelation(
                    4, "shop", "outer_view", "v", ((1, "id"),), " SELECT id FROM shop.tokens_view;"
                ),
                CatalogRelation(5, "shop", "bad_view", "v", ((1, "id"),), "not sql at all"),
                CatalogRelation(6, "shop", "cat_view", "v", ((1, "id"),), " SELECT oid AS id FROM pg_class;"),
            )
        )

    unsafe: list[int] = []
    engine.on_cache_unsafe.append(lambda: unsafe.append(1))
    engine.set_catalog("shop", catalog(" SELECT id FROM secret.tokens;"))
    opened(engine, ALICE)
    action, _, text = decide(engine, ALICE, "select * from shop.tokens_view")
    assert action == "deny" and "view shop.tokens_view reads secret.tokens, which is not allowed" in text
    action, _, text = decide(engine, ALICE, "select * from shop.outer_view")
    assert action == "deny" and "through view shop.tokens_view" in text
    action, _, text = decide(engine, ALICE, "select * from shop.bad_view")
    assert action == "deny" and "cannot read the definition of view shop.bad_view" in text
    assert decide(engine, ALICE, "select * from shop.cat_view")[0] == "allow"
    assert decide(engine, ALICE, "select * from shop.orders")[0] == "allow"
    assert not unsafe
    # A new snapshot where the view reads something allowed: cached decisions are cleared.
    engine.set_catalog("shop", catalog(" SELECT id FROM shop.orders;"))
    assert unsafe
    assert decide(engine, ALICE, "select * from shop.tokens_view")[0] == "allow"
    assert decide(engine, ALICE, "select * from shop.outer_view")[0] == "allow"
