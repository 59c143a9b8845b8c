"""`pgward policy test`: run decision test cases against policy files or a pgward server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control_plane.policy.engine import PolicyEngine
from control_plane.policy.explain import ExplainIdentity, ExplainRequest, explain

Explainer = Callable[[ExplainRequest], dict[str, Any]]


class TestCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    identity: ExplainIdentity
    connection: str
    sql: str
    expect: str = Field(pattern="^(allow|deny|no_session)$")
    policy: str | None = None
    rule: str | None = None
    sqlstate: str | None = None
    message_contains: str | None = None
    login_role: str | None = None
    search_path: str | None = None


@dataclass
class Outcome:
    where: str
    name: str
    ok: bool
    got: str
    why: str
    problems: list[str]


def engine_explainer(engine: PolicyEngine) -> Explainer:
    return lambda request: explain(engine, request).model_dump()


def run(cases: list[tuple[str, dict[str, Any]]], explainer: Explainer) -> list[Outcome]:
    outcomes = []
    for where, raw in cases:
        try:
            case = TestCase.model_validate(raw)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
            ]
            outcomes.append(Outcome(where, str(raw.get("name") or where), False, "invalid", "", problems))
            continue
        request = ExplainRequest(
            identity=case.identity,
            connection=case.connection,
            sql=case.sql,
            login_role=case.login_role,
            search_path=case.search_path,
        )
        result = explainer(request)
        decision = result["decision"]
        session_ok = result["session"]["allowed"]
        got = "no_session" if not session_ok else decision["action"]
        problems = []
        if got != case.expect:
            problems.append(f"expected {case.expect}, got {got}")
        for key in ("policy", "rule", "sqlstate"):
            want = getattr(case, key)
            if want is not None and decision.get(key) != want:
                problems.append(f"expected {key} {want!r}, got {decision.get(key)!r}")
        if case.message_contains and case.message_contains not in (decision.get("message") or ""):
            problems.append(f"message does not contain {case.message_contains!r}")
        if decision["action"] == "allow":
            why = f"allowed by {decision.get('policy')}/{decision.get('rule')}"
            if decision.get("matched"):
                why = "allowed by " + ", ".join(decision["matched"])
        else:
            why = " — ".join(x for x in (decision.get("message"), decision.get("detail")) if x)
        name = case.name or f"{case.identity.username}: {case.sql}"
        outcomes.append(Outcome(where, name, not problems, got, why, problems))
    return outcomes
