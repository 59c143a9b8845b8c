"""Explaining decisions: what the engine decides for a described identity, connection and SQL, and why."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control_plane.identity.credentials import Identity
from control_plane.policy.engine import PolicyEngine, Refusal


class ExplainIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=200)
    kind: Literal["person", "service"] = "person"
    claims: dict[str, Any] = Field(default_factory=dict)


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: ExplainIdentity
    connection: str = Field(min_length=1, max_length=63)
    sql: str = Field(max_length=1_000_000)
    login_role: str | None = Field(default=None, description='The connection\'s login role, for "$user"')
    search_path: str | None = Field(
        default=None, description='The session\'s search_path (default "$user", public)'
    )


class ExplainSession(BaseModel):
    allowed: bool
    policies: list[str] = Field(default_factory=list)
    run_as: str | None = None
    read_only: bool | None = None
    setup_sql: str | None = None
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None


class ExplainResponse(BaseModel):
    policy_version: str
    session: ExplainSession
    decision: dict[str, Any]


def to_identity(spec: ExplainIdentity) -> Identity:
    """An Identity for explaining; `claims` rides along for session_context templates."""
    identity = Identity(
        subject=f"{spec.kind}:{spec.username}",
        username=spec.username,
        groups=tuple(spec.groups),
        issuer="explain",
        kind=spec.kind,
        credential="explain",
    )
    if spec.claims:
        if "claims" in {f.name for f in dataclasses.fields(Identity)}:
            identity = dataclasses.replace(identity, claims=spec.claims)  # type: ignore[call-arg,unused-ignore]
        else:
            # Identity has no claims field yet: templates read them through getattr.
            object.__setattr__(identity, "claims", spec.claims)
    return identity


def explain(engine: PolicyEngine, body: ExplainRequest) -> ExplainResponse:
    identity = to_identity(body.identity)
    grant = engine.session_scope(
        identity, body.connection, login_role=body.login_role, search_path=body.search_path
    )
    if isinstance(grant, Refusal):
        session = ExplainSession(
            allowed=False,
            sqlstate=grant.sqlstate,
            message=grant.message,
            detail=grant.detail,
            hint=grant.hint,
        )
        decision: dict[str, Any] = {
            "action": "deny",
            "sqlstate": grant.sqlstate,
            "message": grant.message,
            "detail": grant.detail,
            "hint": grant.hint,
            "policy": None,
            "rule": None,
            "classes": [],
            "tables": [],
        }
        return ExplainResponse(policy_version=engine.version, session=session, decision=decision)
    engine.open_session(0, grant)
    try:
        result = engine.decide(identity, body.connection, 0, body.sql, "query")
    finally:
        engine.close_session(0)
    session = ExplainSession(
        allowed=True,
        policies=list(grant.policies),
        run_as=grant.run_as,
        read_only=grant.read_only,
        setup_sql=grant.setup_sql(),
    )
    return ExplainResponse(policy_version=engine.version, session=session, decision=result.explain())
