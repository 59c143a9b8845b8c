"""Policy documents: the pydantic models behind the YAML/JSON format and its published JSON Schema."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from control_plane.connections.schemas import ResourceName

STATEMENT_CLASSES: tuple[str, ...] = (
    "read",
    "write",
    "ddl",
    "destructive_ddl",
    "admin",
    "copy_in",
    "copy_out",
    "function_call",
    "session",
    "transaction",
    "utility",
)
StatementClass = Literal[
    "read",
    "write",
    "ddl",
    "destructive_ddl",
    "admin",
    "copy_in",
    "copy_out",
    "function_call",
    "session",
    "transaction",
    "utility",
    "all",
]
# Classes a read-only scope may be granted; any other allow makes the scope read-write.
READ_ONLY_CLASSES = frozenset({"read", "copy_out", "session", "transaction", "utility"})

GroupOrUser = Annotated[str, StringConstraints(min_length=1, max_length=256)]
RoleName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[^\x00]+$")]
ContextKey = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
# `schema.name` with shell-style wildcards in either part, or `*` for everything.
TablePattern = Annotated[str, StringConstraints(min_length=1, max_length=200)]

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
IDENTITY_FIELDS = frozenset({"username", "subject", "kind", "groups", "issuer"})


def split_pattern(pattern: str) -> tuple[str, str]:
    """(schema glob, name glob) of a table pattern; `*` alone means every schema and name."""
    if pattern == "*":
        return "*", "*"
    schema, sep, name = pattern.partition(".")
    if not sep or not schema or not name or "." in name:
        raise ValueError(f'table pattern "{pattern}" must look like schema.name (wildcards allowed: shop.*)')
    return schema, name


def template_fields(template: str) -> list[str]:
    """The `{…}` references of a session_context template (`{{`/`}}` are literal braces)."""
    return _TEMPLATE_FIELD.findall(template.replace("{{", "").replace("}}", ""))


class Subjects(BaseModel):
    """Who a policy applies to: any of these matches."""

    model_config = ConfigDict(extra="forbid")

    groups: list[GroupOrUser] = Field(
        default_factory=list, description="Identity groups (OIDC claim or service groups)"
    )
    users: list[GroupOrUser] = Field(
        default_factory=list, description="Usernames of people (OIDC identities)"
    )
    service_identities: list[GroupOrUser] = Field(
        default_factory=list, description="Names of pgward service identities"
    )


# A duration: a positive number and a unit (s, m, h, d): "90s", "15m", "8h", "1d".
Duration = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}[smhd]$")]
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 30 * 86400


def duration_seconds(value: str) -> int:
    """Seconds in a Duration ("15m" → 900)."""
    seconds = int(value[:-1]) * _UNIT_SECONDS[value[-1]]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value} is longer than 30 days")
    return seconds


def _checked_duration(value: str) -> str:
    duration_seconds(value)
    return value


class Approval(BaseModel):
    """How a statement that needs approval is approved (docs/policies.md, Approvals)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["held", "deferred"] = Field(
        default="held",
        description="held: the client waits in its session for the decision; deferred: the statement is "
        "refused now with the review's URL and may be run once after approval",
    )
    approvers: list[GroupOrUser] = Field(
        default_factory=list,
        description="Groups whose members may decide (omitted: the groups in PGWARD_APPROVER_GROUPS)",
    )
    approvals_required: int = Field(
        default=1, ge=1, le=20, description="How many different approvers must approve (N of M)"
    )
    reason_required: bool = Field(
        default=False,
        description="The statement must carry a reason in a comment: /* reason: INC-1234 */",
    )
    timeout: Duration = Field(default="15m", description="How long a review waits for its decision")
    valid_for: Duration = Field(
        default="15m", description="deferred: how long after approval the statement may be run (once)"
    )
    break_glass: bool = Field(
        default=False,
        description="The requester may approve their own review in an emergency, with a mandatory "
        "reason; flagged in the audit and sent to every webhook",
    )

    _durations = field_validator("timeout", "valid_for")(_checked_duration)


class AccessRequests(BaseModel):
    """Who may request this policy for a limited time (just-in-time access), and who approves."""

    model_config = ConfigDict(extra="forbid")

    requesters: Subjects = Field(description="Who may request the policy")
    approvers: list[GroupOrUser] = Field(
        default_factory=list,
        description="Groups whose members may decide (omitted: the groups in PGWARD_APPROVER_GROUPS)",
    )
    approvals_required: int = Field(default=1, ge=1, le=20, description="Different approvers needed (N of M)")
    reason_required: bool = Field(default=True, description="A request must say why")
    max_duration: Duration = Field(default="8h", description="The longest grant a request may ask for")
    timeout: Duration = Field(default="24h", description="How long a request waits for its decision")
    break_glass: bool = Field(
        default=False, description="Requesters may approve their own request with a mandatory reason (loud)"
    )

    _durations = field_validator("max_duration", "timeout")(_checked_duration)

    @model_validator(mode="after")
    def _has_requesters(self) -> AccessRequests:
        r = self.requesters
        if not (r.groups or r.users or r.service_identities):
            raise ValueError("requesters must name at least one group, user or service identity")
        return self


class Rule(BaseModel):
    """One rule: exactly one of allow, deny or require_approval, optionally limited to tables."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, max_length=100, description="Shown in decisions; defaults to rules[i]"
    )
    allow: list[StatementClass] | None = None
    deny: list[StatementClass] | None = None
    require_approval: list[StatementClass] | None = None
    tables: list[TablePattern] | None = Field(
        default=None,
        description="schema.name globs (shop.*); the rule covers only these objects. Omitted: every object.",
    )
    approval: Approval | None = Field(
        default=None,
        description="require_approval only: how approval works (omitted: the policy's approval block)",
    )

    @field_validator("tables")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("tables must name at least one pattern (omit it to cover every table)")
            for pattern in value:
                split_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        given = [a for a in ("allow", "deny", "require_approval") if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError("a rule has exactly one of allow, deny, require_approval")
        if not getattr(self, given[0]):
            raise ValueError(f"{given[0]} must name at least one statement class")
        if self.approval is not None and given[0] != "require_approval":
            raise ValueError("approval belongs to require_approval rules only")
        return self

    @property
    def action(self) -> str:
        return "allow" if self.allow is not None else "deny" if self.deny is not None else "require_approval"

    @property
    def classes(self) -> frozenset[str]:
        listed = self.allow or self.deny or self.require_approval or []
        return frozenset(STATEMENT_CLASSES) if "all" in listed else frozenset(listed)


# A guardrail is on (true: refuse), off (false), or turns what it refuses into a review.
GuardrailSetting = bool | Literal["require_approval"]


class Guardrails(BaseModel):
    """Built-in protections, all on unless a policy turns one off explicitly (false). A guardrail set to
    "require_approval" sends what it would refuse for approval instead (the policy's approval block)."""

    model_config = ConfigDict(extra="forbid")

    no_unbounded_write: GuardrailSetting = Field(
        default=True, description="UPDATE/DELETE without WHERE or with an always-true WHERE"
    )
    no_drop_database: GuardrailSetting = True
    no_role_escape: GuardrailSetting = Field(
        default=True,
        description="SET ROLE, RESET ROLE, SET SESSION AUTHORIZATION, set_config('role'), "
        "changing pgward.* settings",
    )
    no_server_file_access: GuardrailSetting = Field(
        default=True,
        description="COPY … PROGRAM, COPY to/from server files, pg_read_file, lo_import, dblink, …",
    )
    no_alter_system: GuardrailSetting = True
    data_modifying_cte_is_write: Literal[True] = Field(
        default=True,
        description="A WITH that modifies data is a write. Cannot be turned off: "
        "counting it as a read would be a hole.",
    )


# Masking functions from the strictest to the weakest: when two rules mask one column, the stricter wins.
MASK_FUNCTIONS: tuple[str, ...] = ("null", "redact", "hash", "default", "last4", "partial", "email")
MaskFunction = Literal["null", "redact", "hash", "default", "last4", "partial", "email"]
# `schema.table.column` with shell-style wildcards in each part.
ColumnPattern = Annotated[str, StringConstraints(min_length=1, max_length=300)]
TagName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")]


def split_column_pattern(pattern: str) -> tuple[str, str, str]:
    """(schema glob, table glob, column glob) of a column pattern (`shop.*.ssn`)."""
    parts = pattern.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f'column pattern "{pattern}" must look like schema.table.column (wildcards allowed: shop.*.ssn)'
        )
    return parts[0], parts[1], parts[2]


class MaskingRule(BaseModel):
    """Columns (by pattern or by tag) whose values the policy's subjects see masked."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, max_length=100, description="Shown in decisions; default masking[i]"
    )
    columns: list[ColumnPattern] = Field(
        default_factory=list, description="schema.table.column globs (shop.customers.email, shop.*.ssn)"
    )
    tags: list[TagName] = Field(
        default_factory=list, description="Column tags (from column_tags of any policy on the connection)"
    )
    function: MaskFunction = Field(description="How values are masked; see docs/masking.md")
    text: str | None = Field(
        default=None, max_length=200, description="redact: the replacement text (omitted: NULL)"
    )
    first: int = Field(default=0, ge=0, le=100, description="partial: characters kept at the start")
    last: int = Field(default=0, ge=0, le=100, description="partial: characters kept at the end")
    exempt_groups: list[GroupOrUser] = Field(
        default_factory=list, description="Groups that see these columns in clear"
    )
    strict: bool = Field(
        default=False,
        description="Mask at the source: predicates, joins and functions see masked values too (the "
        "statement is rewritten; docs/masking.md, Strict masking). Not available with hash.",
    )

    @field_validator("columns")
    @classmethod
    def _column_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            split_column_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _shape(self) -> MaskingRule:
        if not self.columns and not self.tags:
            raise ValueError("a masking rule names at least one column pattern or tag")
        _check_function_parameters(self.function, self.text, self.first, self.last)
        if self.strict and self.function == "hash":
            # Computing the HMAC in the database would put the deployment's key into statement text
            # (pg_stat_activity, server logs, pg_stat_statements).
            raise ValueError(
                "strict masking cannot use hash: the key would appear in statement text; use null, "
                "redact, default, last4, partial or email"
            )
        return self


def _check_function_parameters(function: str, text: str | None, first: int, last: int) -> None:
    if text is not None and function != "redact":
        raise ValueError("text is a parameter of the redact function only")
    if text is not None and "\x00" in text:
        raise ValueError("text contains a NUL character")
    if (first or last) and function != "partial":
        raise ValueError("first and last are parameters of the partial function only")
    if function == "partial" and not (first or last):
        raise ValueError("partial keeps first and/or last characters: set at least one of them")


# What content detectors find (docs/masking.md, Content detectors).
DETECTOR_KINDS: tuple[str, ...] = ("email", "card", "ssn", "phone")
DetectorKind = Literal["email", "card", "ssn", "phone"]


class Detectors(BaseModel):
    """Content detectors: output columns with no table origin are scanned per value, and a value that
    contains a detected item is masked whole with the function."""

    model_config = ConfigDict(extra="forbid")

    kinds: list[DetectorKind] = Field(
        min_length=1, description="What to detect: email, card (Luhn-checked), ssn (US), phone"
    )
    function: MaskFunction = Field(
        default="redact", description="How a value with a detected item is masked; see docs/masking.md"
    )
    text: str | None = Field(
        default=None, max_length=200, description="redact: the replacement text (omitted: NULL)"
    )
    first: int = Field(default=0, ge=0, le=100, description="partial: characters kept at the start")
    last: int = Field(default=0, ge=0, le=100, description="partial: characters kept at the end")
    exempt_groups: list[GroupOrUser] = Field(
        default_factory=list, description="Groups whose sessions are not scanned"
    )

    @field_validator("kinds")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("kinds lists a kind twice")
        return value

    @model_validator(mode="after")
    def _parameters(self) -> Detectors:
        _check_function_parameters(self.function, self.text, self.first, self.last)
        return self


GUARDRAILS: tuple[str, ...] = (
    "no_unbounded_write",
    "no_drop_database",
    "no_role_escape",
    "no_server_file_access",
    "no_alter_system",
)


class PolicyDocument(BaseModel):
    """A policy: who (subjects) may do what (rules) on which connections, as which role."""

    model_config = ConfigDict(extra="forbid", title="pgward Policy")

    kind: Literal["Policy"] = "Policy"
    name: ResourceName
    description: str = Field(default="", max_length=2000)
    subjects: Subjects = Field(
        description="Who the policy applies to (may be empty when access_requests grants it on request)"
    )
    connections: list[Annotated[str, StringConstraints(min_length=1, max_length=63)]] = Field(
        min_length=1, description="Connection names (globs allowed: `*` is every connection)"
    )
    run_as: RoleName | None = Field(
        default=None, description="Target role: the gateway runs SET ROLE after connecting"
    )
    session_context: dict[ContextKey, Annotated[str, StringConstraints(max_length=1000)]] = Field(
        default_factory=dict,
        description="pgward.<key> settings for row-level security; templates {claims.x}, {identity.username}",
    )
    rules: list[Rule] = Field(min_length=1)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    masking: list[MaskingRule] = Field(
        default_factory=list, description="Columns the subjects see masked (docs/masking.md)"
    )
    detectors: Detectors | None = Field(
        default=None,
        description="Content detectors for output columns with no table origin (docs/masking.md)",
    )
    approval: Approval | None = Field(
        default=None,
        description="Defaults for this policy's require_approval rules and its guardrails set to "
        "require_approval",
    )
    access_requests: AccessRequests | None = Field(
        default=None,
        description="Just-in-time access: who may request this policy for a limited time, who approves",
    )
    column_tags: dict[ColumnPattern, list[TagName]] = Field(
        default_factory=dict,
        description="Tags of columns of the policy's connections (schema.table.column globs); they apply "
        "to the masking rules of every policy on those connections",
    )

    @field_validator("column_tags")
    @classmethod
    def _tagged_columns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern in value:
            split_column_pattern(pattern)
        return value

    @field_validator("session_context")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        for key, template in value.items():
            if "\x00" in template:
                raise ValueError(f"session_context.{key} contains a NUL character")
            for ref in template_fields(template):
                head, _, tail = ref.partition(".")
                if head == "claims" and tail:
                    continue
                if head == "identity" and tail in IDENTITY_FIELDS:
                    continue
                raise ValueError(
                    f"session_context.{key}: unknown reference {{{ref}}} (use {{claims.NAME}} or "
                    f"{{identity.{'|'.join(sorted(IDENTITY_FIELDS))}}})"
                )
        return value

    @model_validator(mode="after")
    def _has_subjects(self) -> PolicyDocument:
        s = self.subjects
        if not (s.groups or s.users or s.service_identities) and self.access_requests is None:
            raise ValueError(
                "subjects must name at least one group, user or service identity "
                "(or access_requests must say who may request the policy)"
            )
        return self

    def approval_for(self, rule: Rule | None) -> Approval:
        """The approval settings of one of this policy's rules (or of its guardrails: rule None)."""
        if rule is not None and rule.approval is not None:
            return rule.approval
        return self.approval or Approval()

    def applies_to_connection(self, connection: str) -> bool:
        return any(fnmatch.fnmatchcase(connection, pattern) for pattern in self.connections)

    def spec(self) -> dict[str, Any]:
        """The document as stored and compared (defaults filled in, so equal meaning = equal JSON)."""
        return self.model_dump(mode="json", exclude_none=False)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a policy document (docs/policy.schema.json)."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://pgward.dev/schemas/policy.schema.json"
    return schema
