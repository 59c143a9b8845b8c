"""Approval settings in policy documents: validation, and what the engine asks for (no gateway)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from control_plane.approvals.reasons import statement_reason
from control_plane.identity.credentials import Identity
from control_plane.policy.documents import PolicyDocument
from control_plane.policy.engine import PolicyEngine, PolicySet

BOB = Identity("sub-bob", "bob", ("dba",), "https://issuer.test", "person", "oidc")


def doc(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "p",
        "subjects": {"groups": ["dba"]},
        "connections": ["shop"],
        "rules": [{"allow": ["all"]}],
    }
    base.update(extra)
    return base


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (doc(rules=[{"allow": ["read"], "approval": {}}]), "approval belongs to require_approval rules only"),
        (doc(approval={"timeout": "15 minutes"}), "pattern"),
        (doc(approval={"timeout": "31d"}), "longer than 30 days"),
        (doc(approval={"mode": "later"}), "held"),
        (doc(approval={"approvals_required": 0}), "greater than or equal to 1"),
        (doc(subjects={}), "access_requests must say who may request"),
        (doc(access_requests={"requesters": {}}), "requesters must name"),
        (doc(guardrails={"no_unbounded_write": "ask"}), "require_approval"),
    ],
)
def test_invalid_documents(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PolicyDocument.model_validate(bad)


def engine(*docs: dict[str, Any]) -> PolicyEngine:
    e = PolicyEngine(PolicySet.build([PolicyDocument.model_validate(d) for d in docs]))
    grant = e.session_scope(BOB, "shop")
    assert not hasattr(grant, "sqlstate")
    e.open_session(1, grant)  # type: ignore[arg-type]
    return e


def test_rule_and_policy_settings_and_strictest_merge() -> None:
    e = engine(
        doc(
            approval={"mode": "deferred", "approvers": ["leads"], "timeout": "1h"},
            rules=[
                {"allow": ["all"]},
                {"name": "drops", "require_approval": ["destructive_ddl"]},
                {
                    "name": "orders",
                    "require_approval": ["write"],
                    "tables": ["shop.orders"],
                    "approval": {
                        "approvers": ["dbas"],
                        "approvals_required": 3,
                        "timeout": "5m",
                        "mode": "held",
                    },
                },
            ],
        )
    )
    drop = e.decide(BOB, "shop", 1, "drop table shop.items")
    assert drop.approval is not None and drop.cache == "none"
    assert drop.approval.approval.approvers == ["leads"] and drop.approval.approval.mode == "deferred"
    both = e.decide(BOB, "shop", 1, "update shop.orders set status = 'x' where id = 1; drop table shop.items")
    assert both.approval is not None
    merged = both.approval.approval
    assert merged.approvers == ["dbas"] and merged.approvals_required == 3
    assert merged.timeout == "5m" and merged.mode == "held"
    assert e.decide(BOB, "shop", 1, "select 1").approval is None


def test_deny_wins_over_approval_whatever_the_order() -> None:
    e = engine(
        doc(
            rules=[
                {"require_approval": ["write"]},
                {"deny": ["write"], "tables": ["shop.secrets"]},
                {"allow": ["all"]},
            ]
        )
    )
    d = e.decide(BOB, "shop", 1, "delete from shop.secrets where id = 1")
    assert d.action == "deny" and d.approval is None and "denied by policy" in (d.message or "")


def test_guardrail_set_to_require_approval() -> None:
    e = engine(doc(guardrails={"no_unbounded_write": "require_approval"}))
    d = e.decide(BOB, "shop", 1, "delete from shop.orders")
    assert d.approval is not None and d.approval.rule == "guardrail:no_unbounded_write"
    # Another policy that keeps the guardrail on wins: refused, no review.
    e2 = engine(
        doc(guardrails={"no_unbounded_write": "require_approval"}),
        doc(name="q", rules=[{"allow": ["read"]}]),
    )
    d2 = e2.decide(BOB, "shop", 1, "delete from shop.orders")
    assert d2.approval is None and d2.rule == "guardrail:no_unbounded_write"


def test_statement_reason() -> None:
    assert statement_reason("/* reason: INC-1234 */ drop table t") == "INC-1234"
    assert statement_reason("-- Reason: fix the import\ndelete from t") == "fix the import"
    assert statement_reason("drop table t /* reason: late */") is None
    assert statement_reason("/* reason:   */ drop table t") is None
