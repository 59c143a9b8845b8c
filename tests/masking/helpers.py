"""A small catalog like the demo's, and an engine with masking rules, for unit tests."""

from __future__ import annotations

from typing import Any

from control_plane.identity.credentials import Identity
from control_plane.policy.documents import PolicyDocument
from control_plane.policy.engine import PolicyEngine, PolicySet, SessionGrant
from control_plane.policy.masking import Catalog, CatalogRelation, resolve

CATALOG = Catalog(
    (
        CatalogRelation(
            100,
            "shop",
            "customers",
            "r",
            ((1, "id"), (2, "name"), (3, "email"), (4, "phone"), (5, "ssn"), (6, "card_number")),
            types=((23, "integer"), (25, "text"), (25, "text"), (25, "text"), (25, "text"), (25, "text")),
        ),
        CatalogRelation(200, "shop", "orders", "r", ((1, "id"), (2, "customer_id"), (3, "status"))),
        CatalogRelation(
            300,
            "shop",
            "contacts",
            "v",
            ((1, "id"), (2, "email"), (3, "email_lower")),
            "SELECT customers.id, customers.email, lower(customers.email) AS email_lower FROM shop.customers",
            types=((23, "integer"), (25, "text"), (25, "text")),
        ),
        CatalogRelation(
            301,
            "shop",
            "contacts2",
            "v",
            ((1, "e"),),
            "SELECT contacts.email AS e FROM shop.contacts",
            types=((25, "text"),),
        ),
        CatalogRelation(
            302, "shop", "casts", "v", ((1, "x"),), "SELECT (customers.ssn)::integer AS x FROM shop.customers"
        ),
        CatalogRelation(400, "shop", "customers_2024", "r", ((1, "id"), (2, "ssn")), None, (100,)),
        CatalogRelation(500, "public", "notes", "r", ((1, "id"), (2, "body"))),
    )
)

MASKING: list[dict[str, Any]] = [
    {"columns": ["shop.customers.email"], "function": "email", "exempt_groups": ["dba"]},
    {"columns": ["shop.customers.phone"], "function": "partial", "last": 4, "exempt_groups": ["dba"]},
    {"columns": ["shop.*.ssn"], "function": "hash", "exempt_groups": ["dba"]},
    {"tags": ["pii.card"], "function": "last4", "exempt_groups": ["dba"]},
]


def policy(**extra: Any) -> PolicyDocument:
    doc: dict[str, Any] = {
        "name": "analysts",
        "subjects": {"groups": ["analysts", "dba"]},
        "connections": ["shop"],
        "rules": [{"allow": ["read", "write", "copy_in", "copy_out", "ddl", "function_call", "utility"]}],
        "guardrails": {"no_unbounded_write": False},
        "masking": MASKING,
        "column_tags": {"shop.customers.card_number": ["pii.card"]},
    }
    doc.update(extra)
    return PolicyDocument.model_validate(doc)


def person(name: str, *groups: str) -> Identity:
    return Identity(f"person:{name}", name, tuple(groups), "test", "person", "oidc")


def masked_engine(
    *groups: str, docs: list[PolicyDocument] | None = None
) -> tuple[PolicyEngine, SessionGrant]:
    engine = PolicyEngine(PolicySet.build(docs or [policy()]))
    grant = engine.session_scope(person("alice", *groups), "shop")
    assert isinstance(grant, SessionGrant), grant
    engine.open_session(1, grant)
    if grant.masking.active:
        engine.set_masks(1, resolve(grant.masking, CATALOG))
    return engine, grant
