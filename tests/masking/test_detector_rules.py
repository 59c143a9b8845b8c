"""Detectors in policy documents: validation, how a session's detectors are compiled, and the scanners
as Python sees them (the same Rust code the data plane runs)."""

from __future__ import annotations

import fnmatch

import pytest
import yaml
from pydantic import ValidationError

from control_plane.connections.propose import ColumnProposal, TagProposal
from control_plane.dataplane import detect, detect_counts
from control_plane.demo.shop import generate_customers
from control_plane.policy.documents import PolicyDocument
from control_plane.policy.engine import PolicyEngine, PolicySet, SessionGrant
from tests.masking.helpers import person, policy


def test_documents_validate_detectors() -> None:
    doc = policy(detectors={"kinds": ["email", "ssn"]})
    assert doc.detectors is not None and doc.detectors.function == "redact"
    for bad, match in [
        ({"kinds": []}, "at least 1"),
        ({"kinds": ["iban"]}, "email"),
        ({"kinds": ["ssn", "ssn"]}, "twice"),
        ({"kinds": ["ssn"], "function": "hash", "text": "x"}, "redact function only"),
        ({"kinds": ["ssn"], "function": "partial"}, "at least one"),
        ({"kinds": ["ssn"], "first": 2}, "partial function only"),
        ({"kinds": ["ssn"], "surprise": 1}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=match):
            policy(detectors=bad)


def grant(name: str, *groups: str, docs: list[PolicyDocument]) -> SessionGrant:
    g = PolicyEngine(PolicySet.build(docs)).session_scope(person(name, *groups), "shop")
    assert isinstance(g, SessionGrant), g
    return g


def test_each_kind_gets_the_strictest_function_strictest_first() -> None:
    docs = [
        policy(detectors={"kinds": ["email", "phone"], "function": "partial", "last": 4}),
        policy(
            name="second",
            masking=[],
            column_tags={},
            detectors={"kinds": ["phone", "ssn"], "function": "null", "exempt_groups": ["dba"]},
        ),
    ]
    alice = grant("alice", "analysts", docs=docs)
    assert [(d["kind"], d["function"]) for d in alice.masking.scope_detectors()] == [
        ("ssn", "null"),
        ("phone", "null"),
        ("email", "partial"),
    ]
    # dba is exempt from the second policy's detectors only.
    dba = grant("dora", "dba", docs=docs)
    assert [(d["kind"], d["function"]) for d in dba.masking.scope_detectors()] == [
        ("email", "partial"),
        ("phone", "partial"),
    ]
    # No detectors: nothing in the scope, and masking stays as the rules say.
    plain = grant("alice", "analysts", docs=[policy()])
    assert plain.masking.scope_detectors() == [] and plain.masking.active


def test_engine_refuses_copy_out_in_a_session_with_detectors_only() -> None:
    doc = policy(masking=[], column_tags={}, detectors={"kinds": ["email"]})
    engine = PolicyEngine(PolicySet.build([doc]))
    who = person("sam", "analysts")
    g = engine.session_scope(who, "shop")
    assert isinstance(g, SessionGrant)
    engine.open_session(1, g)
    refused = engine.decide(who, "shop", 1, "copy (select email from shop.customers) to stdout")
    assert refused.action == "deny" and refused.sqlstate == "42501"
    assert "content detectors" in (refused.message or "")
    assert engine.decide(who, "shop", 1, "select email || '' from shop.customers").action == "allow"
    assert engine.decide(who, "shop", 1, "copy shop.customers from stdin").action == "allow"


def test_detect_finds_the_demo_pii_and_not_the_rest() -> None:
    rows = generate_customers(200)
    for _cid, name, email, phone, ssn, card, _created in rows:
        assert detect(email) == ["email"]
        assert detect(phone) == ["phone"]
        assert detect(ssn) == ["ssn"]
        assert detect(card) == ["card"]
        assert detect(name) == []
    assert detect(b"mail jane@example.com, ssn 123-45-6789") == ["email", "ssn"]
    assert detect("\u00e9l\u00e8ve 4111-1111-1111-1111") == ["card"]
    counts = detect_counts([r[3] for r in rows] + [None, "nothing", b"+44 20 7946 0958"])
    assert counts == {"email": 0, "card": 0, "ssn": 0, "phone": 201}


def test_proposal_keys_match_exactly_their_column() -> None:
    odd = ColumnProposal("sales", "Orders 2024", "e*mail?[x]", 10, {"email": 10})
    dotted = ColumnProposal("sales", "v1.2", "phone", 10, {"phone": 9})
    rare = ColumnProposal("sales", "notes", "body", 50, {"ssn": 1})
    text = TagProposal("crm", 50, 0.1, [odd, dotted, rare], ["sales.locked: permission denied"]).yaml()
    tags = yaml.safe_load(text)["column_tags"]
    assert list(tags.values()) == [["pii.email"]]
    (key,) = tags
    schema, table, column = key.split(".")
    assert schema == "sales"
    assert fnmatch.fnmatchcase("e*mail?[x]", column) and not fnmatch.fnmatchcase("eXmail?[x]", column)
    assert fnmatch.fnmatchcase("Orders 2024", table)
    assert "# sales.v1.2.phone: ['pii.phone'] (a name with a dot; tag it by hand)" in text
    assert "# below the threshold: sales.notes.body (ssn 2% of 50)" in text
    assert "# not sampled: sales.locked: permission denied" in text
    assert (
        PolicyDocument.model_validate(
            {
                "name": "p",
                "subjects": {"groups": ["g"]},
                "connections": ["crm"],
                "rules": [{"allow": ["read"]}],
                "column_tags": tags,
            }
        ).column_tags
        == tags
    )
