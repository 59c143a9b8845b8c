"""The policy engine: session scopes and per-statement decisions from compiled policy documents."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.identity.credentials import Identity
from control_plane.policy.classify import (
    CACHE_FINGERPRINT,
    CACHE_NAMES,
    CACHE_NONE,
    CACHE_TEXT,
    ONLY_PINNED,
    ONLY_READ_ONLY,
    Analysis,
    Need,
    ObjectRef,
    Unparsable,
    analyze,
    analyze_node,
    parse,
    parse_search_path,
)
from control_plane.policy.copy import CopyShape
from control_plane.policy.documents import (
    GUARDRAILS,
    READ_ONLY_CLASSES,
    Approval,
    PolicyDocument,
    duration_seconds,
    split_pattern,
)
from control_plane.policy.functions import CATALOG_RELATIONS
from control_plane.policy.leaks import Leak, check_statement, created_relation
from control_plane.policy.masking import Catalog, ResolvedMasks, SessionMasking, session_masking
from control_plane.policy.rewrite import rewrite_strict

# The gateway pins the search_path of every session (in setup_sql) so that the schema an
# unqualified name resolves to is the one the policy checked. `"$user"` is left out of the default:
# it would make every unqualified name depend on schemas named after roles.
DEFAULT_SEARCH_PATH = ("public",)
CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# Classes whose table-less form (DO, CREATE SCHEMA, GRANT on a database, …) can reach any object, so only
# a rule without a `tables` limit may allow it.
BROAD_CLASSES = frozenset({"function_call", "ddl", "destructive_ddl", "admin"})
# Classes whose need on a view is also a need on every relation the view reads (views over views too).
VIEW_EXPANDED_CLASSES = frozenset({"read", "write"})
# Relation kinds whose rows come from other relations: views and materialized views.
VIEW_KINDS = frozenset({"v", "m"})
# Every session may SET/SHOW and use transactions unless a rule denies it: clients and tools (psql,
# pg_dump, drivers) cannot work without them, and the dangerous forms are guardrails.
IMPLICIT_CLASSES = frozenset({"session", "transaction"})


@dataclass(frozen=True)
class CompiledRule:
    policy: str
    index: int
    label: str
    action: str  # allow | deny | require_approval
    classes: frozenset[str]
    patterns: tuple[tuple[str, str], ...] | None  # None: every object
    approval: Approval | None = None  # require_approval rules: how they are approved

    def covers(self, obj: ObjectRef) -> bool:
        if self.patterns is None:
            return True
        schema = obj.schema or ""
        return any(
            fnmatch.fnmatchcase(schema, s) and fnmatch.fnmatchcase(obj.name, n) for s, n in self.patterns
        )

    def describe(self) -> str:
        what = ", ".join(sorted(self.classes)) if len(self.classes) < 11 else "all"
        where = f" on {', '.join(f'{s}.{n}' for s, n in self.patterns)}" if self.patterns else ""
        return f'policy "{self.policy}", rule "{self.label}" ({self.action} {what}{where})'


@dataclass(frozen=True)
class CompiledPolicy:
    doc: PolicyDocument
    rules: tuple[CompiledRule, ...]

    @classmethod
    def compile(cls, doc: PolicyDocument) -> CompiledPolicy:
        rules = []
        for i, rule in enumerate(doc.rules):
            patterns = tuple(split_pattern(p) for p in rule.tables) if rule.tables is not None else None
            approval = doc.approval_for(rule) if rule.action == "require_approval" else None
            rules.append(
                CompiledRule(
                    doc.name, i, rule.name or f"rules[{i}]", rule.action, rule.classes, patterns, approval
                )
            )
        return cls(doc, tuple(rules))

    def applies_to(self, identity: Identity) -> bool:
        s = self.doc.subjects
        if set(s.groups) & set(identity.groups):
            return True
        if identity.kind == "service":
            return identity.username in s.service_identities
        return identity.username in s.users


@dataclass(frozen=True)
class ActiveGrant:
    """An approved access request: `policy` applies to one identity until `expires_at` (epoch seconds)."""

    policy: str
    issuer: str
    subject: str
    expires_at: float
    request_id: str


@dataclass(frozen=True)
class PolicySet:
    """An immutable set of compiled policies and the version every scope key includes."""

    version: str
    policies: tuple[CompiledPolicy, ...]
    # Just-in-time grants in force when the set was built; part of the version, so a grant starting or
    # ending changes every scope key and clears cached decisions.
    grants: tuple[ActiveGrant, ...] = ()

    @classmethod
    def build(
        cls, docs: Iterable[PolicyDocument], revision: int | str = 0, grants: Iterable[ActiveGrant] = ()
    ) -> PolicySet:
        compiled = tuple(CompiledPolicy.compile(d) for d in sorted(docs, key=lambda d: d.name))
        active = tuple(sorted(grants, key=lambda g: (g.policy, g.issuer, g.subject, g.request_id)))
        digest = hashlib.sha256(
            json.dumps(
                [
                    [p.doc.spec() for p in compiled],
                    [[g.policy, g.issuer, g.subject, g.request_id] for g in active],
                ],
                sort_keys=True,
            ).encode()
        )
        return cls(f"{revision}-{digest.hexdigest()[:10]}", compiled, active)

    def granted(self, policy: str, identity: Identity) -> bool:
        return any(
            g.policy == policy and g.subject == identity.subject and g.issuer == identity.issuer
            for g in self.grants
        )

    def next_expiry(self) -> float | None:
        """When the first grant of this set ends (epoch seconds)."""
        return min((g.expires_at for g in self.grants), default=None)

    def on_connection(self, connection: str) -> tuple[CompiledPolicy, ...]:
        return tuple(p for p in self.policies if p.doc.applies_to_connection(connection))

    def masks_anything(self, connection: str) -> bool:
        return any(p.doc.masking for p in self.on_connection(connection))

    def applicable(self, identity: Identity, connection: str) -> tuple[CompiledPolicy, ...]:
        return tuple(
            p
            for p in self.policies
            if p.doc.applies_to_connection(connection)
            and (p.applies_to(identity) or self.granted(p.doc.name, identity))
        )


@dataclass(frozen=True)
class Refusal:
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None


@dataclass(frozen=True)
class SessionGrant:
    """What one identity may do on one connection under one policy version."""

    identity: Identity
    connection: str
    version: str
    policies: tuple[str, ...]
    rules: tuple[CompiledRule, ...]
    run_as: str | None
    context: Mapping[str, str]
    read_only: bool
    guardrails: frozenset[str]  # the ones in force
    login_role: str
    search_path: tuple[str, ...]
    may_read: bool
    masking: SessionMasking = field(default_factory=SessionMasking)
    # Guardrails that send what they catch for approval instead of refusing it: guardrail → (policy, how).
    guardrail_approvals: Mapping[str, tuple[str, Approval]] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """The session has a role or context the client must not undo."""
        return self.run_as is not None or bool(self.context)

    @property
    def cache_key(self) -> str:
        """Everything a cached decision depends on besides the statement: never shared otherwise."""
        who = json.dumps(
            [
                self.identity.issuer,
                self.identity.subject,
                self.identity.username,
                self.identity.kind,
                sorted(self.identity.groups),
                self.connection,
                self.login_role,
                list(self.search_path),
            ]
        )
        return f"{self.version}|{hashlib.sha256(who.encode()).hexdigest()[:24]}"

    def setup_sql(self) -> str | None:
        """SQL the gateway runs upstream before the client's first ReadyForQuery."""
        parts = ["SET search_path = " + ", ".join(_search_path_item(s) for s in self.search_path)]
        if self.run_as:
            parts.append(f"SET ROLE {quote_ident(self.run_as)}")
        for key, value in sorted(self.context.items()):
            parts.append(
                "SELECT pg_catalog.set_config("
                f"{quote_literal('pgward.' + key)}, {quote_literal(value)}, false)"
            )
        if self.read_only:
            parts.append("SET default_transaction_read_only = on")
        return "; ".join(parts)


def _search_path_item(schema: str) -> str:
    return schema if schema == '"$user"' else quote_ident(schema)


@dataclass(frozen=True)
class ApprovalNeed:
    """Why a statement needs approval and how it is approved."""

    policy: str
    rule: str
    approval: Approval
    what: str
    source: str  # 'policy "p", rule "r" (require_approval write)', for the DETAIL


@dataclass
class StatementDecision:
    action: str  # allow | deny
    cache: str
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None
    policy: str | None = None
    rule: str | None = None
    classes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    # The classes of each statement of the text, for the audit record of each part.
    part_classes: list[str] = field(default_factory=list)
    # Strict masking: the text the data plane sends upstream instead of the client's.
    rewritten: str | None = None
    # Plans for the COPY … TO STDOUT statements of a masked session, in statement order: the data
    # plane masks their output by them (see ResolvedMasks.copy_plan).
    copy: list[dict[str, Any]] | None = None
    # Set when the statement is refused only because it needs approval (the first rule that asked).
    approval: ApprovalNeed | None = None
    approvals: list[ApprovalNeed] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        """The data plane's answer format."""
        out: dict[str, Any] = {"action": self.action, "cache": self.cache}
        if self.action == "allow" and self.rewritten is not None:
            out["action"] = "rewrite"
            out["sql"] = self.rewritten
        for key in ("sqlstate", "message", "detail", "hint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.action == "allow" and self.copy:
            out["copy"] = self.copy
        return out

    def approved_answer(self) -> dict[str, Any]:
        """The answer once its approval is used: what `answer` says for an allowed statement (with a
        strict-masking rewrite and COPY plans), never cached."""
        out: dict[str, Any] = {"action": "allow", "cache": "none"}
        if self.rewritten is not None:
            out["action"] = "rewrite"
            out["sql"] = self.rewritten
        if self.copy:
            out["copy"] = self.copy
        return out

    def explain(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "sqlstate": self.sqlstate,
            "message": self.message,
            "detail": self.detail,
            "hint": self.hint,
            "cache": self.cache,
            "policy": self.policy,
            "rule": self.rule,
            "classes": self.classes,
            "tables": self.tables,
            "statements": self.kinds,
            "matched": self.matched,
            "rewritten": self.rewritten,
        }


@dataclass
class SessionState:
    grant: SessionGrant
    paths: list[tuple[str, ...]]
    prepared: dict[str, list[Analysis]] = field(default_factory=dict)
    masks: ResolvedMasks | None = None  # the session's masks on its catalog snapshot
    # Relations this masked session created after its snapshot (clean: their data passed the analysis).
    created: frozenset[tuple[str | None, str]] = frozenset()

    def copy(self) -> SessionState:
        return SessionState(
            self.grant,
            list(self.paths),
            {k: list(v) for k, v in self.prepared.items()},
            self.masks,
            self.created,
        )


@dataclass(frozen=True)
class ViewRead:
    """A relation a view reads, directly or through the views in `via` (outermost first)."""

    relation: ObjectRef
    via: tuple[ObjectRef, ...] = ()


@dataclass(frozen=True)
class ViewExpansion:
    """Everything one view reads (transitively), or why pgward cannot tell."""

    reads: tuple[ViewRead, ...] = ()
    unreadable: str | None = None


class CatalogViews:
    """The views of one catalog snapshot and what each reads, expanded on first use."""

    def __init__(self, catalog: Catalog) -> None:
        self.digest = catalog.digest
        self.views = {(r.schema, r.name): r for r in catalog.relations if r.kind in VIEW_KINDS}
        self._expanded: dict[int, ViewExpansion] = {}

    def expand(self, schema: str, name: str) -> ViewExpansion | None:
        """What the view `schema.name` reads; None when it is not a view of this snapshot."""
        rel = self.views.get((schema, name))
        if rel is None:
            return None
        return self._expand(rel.oid, schema, name, ())

    def _expand(self, oid: int, schema: str, name: str, visiting: tuple[int, ...]) -> ViewExpansion:
        cached = self._expanded.get(oid)
        if cached is not None:
            return cached
        label = ObjectRef(schema, name)
        rel = self.views[(schema, name)]
        if oid in visiting:
            # PostgreSQL views cannot form cycles; refuse rather than loop if a snapshot says otherwise.
            return ViewExpansion(unreadable=f"view {label} refers to itself")
        try:
            statements = parse(rel.definition or "")
            if len(statements) != 1 or statements[0][0] is None:
                raise Unparsable("not one statement")
            analysis = analyze_node(statements[0][0], statements[0][1])
        except Unparsable:
            result = ViewExpansion(unreadable=f"pgward cannot read the definition of view {label}")
            self._expanded[oid] = result
            return result
        reads: list[ViewRead] = []
        seen: set[ObjectRef] = set()
        for need in analysis.needs:
            obj = need.obj
            if obj is None or obj.kind != "relation":
                continue
            # pg_get_viewdef (with an empty search_path) qualifies every name it has to; an unqualified
            # relation is one found in pg_catalog, which is always searched.
            ref = ObjectRef(obj.schema or "pg_catalog", obj.name)
            if ref in seen:
                continue
            seen.add(ref)
            reads.append(ViewRead(ref))
            inner = self.views.get((ref.schema or "", ref.name))
            if inner is None:
                continue
            nested = self._expand(inner.oid, inner.schema, inner.name, (*visiting, oid))
            if nested.unreadable is not None:
                result = ViewExpansion(unreadable=nested.unreadable)
                self._expanded[oid] = result
                return result
            for item in nested.reads:
                reads.append(ViewRead(item.relation, (ref, *item.via)))
        result = ViewExpansion(tuple(reads))
        self._expanded[oid] = result
        return result


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # E'' escapes backslashes explicitly, so the literal means the same whatever
    # standard_conforming_strings the target uses.
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def render_template(template: str, identity: Identity) -> str:
    """Fill `{claims.x}` / `{identity.field}`; KeyError names what is missing."""
    claims: Mapping[str, Any] = getattr(identity, "claims", None) or {}
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            out.append(ch)
            i += 2
            continue
        if ch == "{":
            end = template.index("}", i)
            ref = template[i + 1 : end]
            head, _, tail = ref.partition(".")
            if head == "claims":
                if tail not in claims or claims[tail] is None:
                    raise KeyError(f"claim {tail!r}")
                value = claims[tail]
            else:
                value = getattr(identity, tail)
            if isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            out.append(str(value))
            i = end + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class PolicyEngine:
    """Decides sessions and statements against the current PolicySet. Not thread-safe: one event loop."""

    def __init__(self, policy_set: PolicySet | None = None, *, public_url: str | None = None) -> None:
        self.policy_set = policy_set or PolicySet.build(())
        self.public_url = public_url.rstrip("/") if public_url else None
        self.sessions: dict[int, SessionState] = {}
        # Sessions (by cache key) whose search_path may differ from the one their key was made with:
        # while any exist, search_path-dependent decisions of that key are not cached (the data plane's
        # cache is shared by every session of a key).
        self._diverged: dict[str, set[int]] = {}
        self.on_cache_unsafe: list[Callable[[], None]] = []
        self._grants: dict[tuple[Any, ...], SessionGrant | Refusal] = {}
        # The latest catalog snapshot of each connection: views are expanded against it.
        self.catalogs: dict[str, CatalogViews] = {}
        self._views_by_digest: dict[str, CatalogViews] = {}

    # --- catalogs ------------------------------------------------------------------------------------

    def set_catalog(self, connection: str, catalog: Catalog) -> None:
        """Check what views of `connection` read against this snapshot from now on. A snapshot that
        differs from the previous one makes cached decisions unsafe (a view may read something else)."""
        previous = self.catalogs.get(connection)
        if previous is not None and previous.digest == catalog.digest:
            return
        views = self._views_by_digest.get(catalog.digest)
        if views is None:
            if len(self._views_by_digest) > 64:
                self._views_by_digest.clear()
            views = self._views_by_digest[catalog.digest] = CatalogViews(catalog)
        self.catalogs[connection] = views
        if previous is not None:
            for callback in self.on_cache_unsafe:
                callback()

    # --- policies ------------------------------------------------------------------------------------

    def replace(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        self._grants.clear()

    @property
    def version(self) -> str:
        return self.policy_set.version

    # --- sessions ------------------------------------------------------------------------------------

    def session_scope(
        self,
        identity: Identity,
        connection: str,
        *,
        login_role: str | None = None,
        search_path: str | None = None,
    ) -> SessionGrant | Refusal:
        """May `identity` use `connection` at all, as which role, with which context; or why not."""
        claims = getattr(identity, "claims", None) or {}
        key = (
            self.policy_set.version,
            identity.issuer,
            identity.subject,
            identity.username,
            identity.kind,
            tuple(identity.groups),
            json.dumps(claims, sort_keys=True, default=str),
            connection,
            login_role,
            search_path,
        )
        cached = self._grants.get(key)
        if cached is None:
            cached = self._grant(identity, connection, login_role or identity.username, search_path)
            if len(self._grants) > 10_000:
                self._grants.clear()
            self._grants[key] = cached
        return cached

    def _grant(
        self, identity: Identity, connection: str, login_role: str, search_path: str | None
    ) -> SessionGrant | Refusal:
        policies = self.policy_set.applicable(identity, connection)
        if not policies:
            groups = ", ".join(identity.groups) or "none"
            return Refusal(
                "28000",
                f'no pgward policy grants "{identity.username}" access to connection "{connection}"',
                detail=f"identity {identity.subject} (kind {identity.kind}, groups: {groups}); "
                "access needs a policy whose subjects include one of these and whose connections "
                f'include "{connection}"',
                hint=self.request_hint(connection),
            )
        run_as = {p.doc.run_as for p in policies if p.doc.run_as}
        if len(run_as) > 1:
            names = ", ".join(p.doc.name for p in policies if p.doc.run_as)
            return Refusal(
                "28000",
                f'policies for "{identity.username}" on "{connection}" name different run_as roles',
                detail=f"policies {names} set run_as to {', '.join(sorted(run_as))}; "
                "pgward will not pick one",
                hint="ask a pgward administrator to make the policies agree",
            )
        context: dict[str, str] = {}
        for p in policies:
            for k, template in p.doc.session_context.items():
                try:
                    value = render_template(template, identity)
                except (KeyError, AttributeError) as e:
                    return Refusal(
                        "28000",
                        f'policy "{p.doc.name}" needs {e.args[0]} for session_context.{k}, '
                        "and your credential does not carry it",
                        hint="sign in again with a token that has the claim, or ask a pgward administrator",
                    )
                if "\x00" in value:
                    return Refusal("28000", f"session_context.{k} would contain a NUL character")
                if k in context and context[k] != value:
                    return Refusal(
                        "28000",
                        f"policies set different values for session_context.{k}",
                        hint="ask a pgward administrator to make the policies agree",
                    )
                context[k] = value
        masking = session_masking(
            [p.doc for p in policies],
            [p.doc for p in self.policy_set.on_connection(connection)],
            identity.groups,
        )
        if masking.undefined_tags:
            return Refusal(
                "28000",
                f'masking rules for "{identity.username}" name column tags that no policy on '
                f'"{connection}" assigns: {", ".join(masking.undefined_tags)}',
                detail="pgward refuses the session rather than leave those columns in clear",
                hint="ask a pgward administrator to define the tags (column_tags) or fix the rules",
            )
        rules = tuple(r for p in policies for r in p.rules)
        allows = [r for r in rules if r.action == "allow"]
        read_only = all(r.classes <= READ_ONLY_CLASSES for r in allows)
        guardrails = frozenset(
            g for g in GUARDRAILS if any(getattr(p.doc.guardrails, g) is True for p in policies)
        )
        # A guardrail no policy turns on but one sets to require_approval sends its catches for review.
        guardrail_approvals = {
            g: (p.doc.name, p.doc.approval_for(None))
            for g in reversed(GUARDRAILS)
            for p in reversed(policies)
            if g not in guardrails and getattr(p.doc.guardrails, g) == "require_approval"
        }
        role = next(iter(run_as)) if run_as else login_role
        path = parse_search_path(search_path) if search_path is not None else DEFAULT_SEARCH_PATH
        return SessionGrant(
            identity=identity,
            connection=connection,
            version=self.policy_set.version,
            policies=tuple(p.doc.name for p in policies),
            rules=rules,
            run_as=next(iter(run_as)) if run_as else None,
            context=context,
            read_only=read_only,
            guardrails=guardrails,
            login_role=role,
            search_path=tuple(s if s != "$user" else '"$user"' for s in path),
            may_read=any("read" in r.classes for r in allows),
            masking=masking,
            guardrail_approvals=guardrail_approvals,
        )

    def open_session(self, session_id: int, grant: SessionGrant) -> None:
        self.sessions[session_id] = SessionState(grant, [grant.search_path])

    def set_masks(self, session_id: int, masks: ResolvedMasks) -> None:
        """The masks the data plane applies to this session: statements are checked against them."""
        state = self.sessions.get(session_id)
        if state is not None:
            state.masks = masks

    def close_session(self, session_id: int) -> None:
        state = self.sessions.pop(session_id, None)
        if state is not None:
            members = self._diverged.get(state.grant.cache_key)
            if members is not None:
                members.discard(session_id)
                if not members:
                    del self._diverged[state.grant.cache_key]

    def request_hint(self, connection: str) -> str:
        if self.public_url:
            return f"request access at {self.public_url}/v1/access-requests (connection {connection})"
        return (
            f"ask a pgward administrator for access to connection {connection} "
            "(access requests: POST /v1/access-requests on the pgward API)"
        )

    # --- statements ----------------------------------------------------------------------------------

    def decide(
        self,
        identity: Identity,
        connection: str,
        session_id: int | None,
        sql: str,
        source: str = "query",
    ) -> StatementDecision:
        """Decide a Query string (every statement in it) or one Parse for an open session."""
        try:
            statements = analyze(sql)
        except Unparsable as e:
            return StatementDecision(
                "deny",
                "none",
                "42601",
                f"pgward could not parse the statement: {e.message}",
                hint="pgward refuses what the PostgreSQL parser cannot read",
            )
        opened = self.sessions.get(session_id) if session_id is not None else None
        current = self.session_scope(
            identity,
            connection,
            login_role=opened.grant.login_role if opened else None,
            search_path=",".join(opened.grant.search_path) if opened else None,
        )
        if isinstance(current, Refusal):
            return StatementDecision(
                "deny",
                "none",
                "42501",
                f'access to connection "{connection}" is no longer granted to "{identity.username}"',
                detail=current.message,
                hint=current.hint,
            )
        if opened is not None and current.masking.key() != opened.grant.masking.key():
            # The data plane masks by the rules the session started with; a policy change (or a
            # just-in-time grant) that changes them needs a new session, never unmasked rows.
            return StatementDecision(
                "deny",
                "none",
                "42501",
                "refused by pgward: the masking rules for this session changed since it started",
                detail="a policy change or a just-in-time grant changed which columns are masked",
                hint="reconnect to continue under the current rules",
            )
        state = opened.copy() if opened else SessionState(current, [current.search_path])
        pinned = state.grant.pinned
        decision = StatementDecision(
            "allow",
            "fingerprint",
            kinds=[a.kind for a in statements],
            part_classes=[",".join(sorted(a.classes)) for a in statements],
        )
        cache = CACHE_FINGERPRINT
        unqualified = False
        for i, a in enumerate(statements):
            refusal = self._statement(current, state, a, pinned, decision)
            cache = min(cache, a.cache)
            unqualified = unqualified or a.unqualified
            if refusal is not None:
                decision.action = "deny"
                decision.sqlstate = "42501"
                decision.message, decision.detail, decision.hint = (
                    refusal.message,
                    refusal.detail,
                    refusal.hint,
                )
                if len(statements) > 1:
                    decision.detail = (decision.detail + "; " if decision.detail else "") + (
                        f"statement {i + 1} of {len(statements)}; the whole query was refused"
                    )
                break
        if decision.action == "allow" and state.masks is not None:
            refusal, touched, copies = self._masking(state, statements, sql, decision)
            if refusal is not None:
                decision.action, decision.sqlstate = "deny", "42501"
                decision.message, decision.detail, decision.hint = (
                    refusal.message,
                    refusal.detail,
                    refusal.hint,
                )
                decision.policy, decision.rule = None, "masking"
            if touched or decision.rewritten is not None:
                # Fingerprints ignore column aliases, and leak analysis follows them through
                # sub-selects: `(select email as x, lower(email) as y …)` vs the swapped aliases.
                # A rewritten text holds the client's constants: only the same text may reuse it.
                cache = min(cache, CACHE_TEXT)
            if refusal is None and copies:
                # A plan holds options (delimiters, NULL strings) that fingerprints normalise away.
                decision.copy = copies
                cache = min(cache, CACHE_TEXT)
        if decision.action == "allow" and state.grant.masking.detectors and state.masks is None:
            refusal = _detectors_refusal(statements)
            if refusal is not None:
                decision.action, decision.sqlstate = "deny", "42501"
                decision.message, decision.hint = refusal.message, refusal.hint
                decision.policy, decision.rule = None, "detectors"
        if decision.action == "allow" and decision.approvals:
            # Everything else passed (masking too: an approved statement runs as the analysis said,
            # rewritten if strict masking rewrote it): only approval stands between it and the database.
            need = _merged(decision.approvals)
            decision.approval = need
            decision.action, decision.sqlstate = "deny", "42501"
            decision.policy, decision.rule = need.policy, need.rule
            decision.message = f"refused by pgward: {need.what} requires approval"
            decision.detail = f"approval required by {need.source}"
            decision.hint = "approvers can approve it once the gateway has opened a review: " + (
                self.request_hint(current.connection)
            )
        if unqualified and (len(state.paths) > 1 or self._diverged.get(state.grant.cache_key)):
            cache = CACHE_NONE
        decision.cache = CACHE_NAMES[cache]
        if decision.approval is not None:
            # Every attempt must reach the decision service: an approval is used once.
            decision.cache = CACHE_NAMES[CACHE_NONE]
        if (
            (decision.action == "allow" or decision.approval is not None)
            and opened
            and session_id is not None
        ):
            # An approved statement runs later without another analysis: its effects (search_path, …)
            # are applied now, which can only make later checks stricter.
            self._commit(session_id, opened, state)
        return decision

    def _masking(
        self, state: SessionState, statements: Sequence[Analysis], sql: str, decision: StatementDecision
    ) -> tuple[Refusal | None, bool, list[dict[str, Any]]]:
        """Leak analysis of a masked session's statements: (refusal or None, read a masked relation,
        plans of its COPY … TO STDOUT statements in order). With strict masking, also the rewritten
        text (`decision.rewritten`)."""
        masks = state.masks
        assert masks is not None
        grant = state.grant
        schemas: list[str] = []
        for path in state.paths:
            for s in path:
                name = grant.login_role if s in ('"$user"', "$user") else s
                if name not in schemas:
                    schemas.append(name)
        strict = bool(masks.strict)
        touched = False
        plans: list[dict[str, Any]] = []
        for a in statements:
            analyses = [a, *(state.prepared.get(a.execute, []) if a.execute else [])]
            try:
                for item in analyses:
                    for need in item.needs:
                        if need.cls == "function_call" and need.obj is not None:
                            raise Leak(
                                f"function {need.obj}() could return masked data in clear, and this "
                                "session has masked columns"
                            )
                    copies: list[CopyShape] = []
                    touched = (
                        check_statement(
                            item.node, masks.index, tuple(schemas), state.created, strict, copies
                        )
                        or touched
                    )
                    plans.extend(masks.copy_plan(shape) for shape in copies)
                    made = created_relation(item.node)
                    if made is not None:
                        state.created = state.created | {made}
                if strict and a is statements[-1]:
                    # Leak analysis above took strict columns as masked at the source: only the
                    # rewritten text may run.
                    decision.rewritten = rewrite_strict(sql, masks.strict, masks.index, schemas)
            except Leak as leak:
                # Refusals depend on names too (a cached refusal must not cover a swapped alias).
                touched = True
                return (
                    Refusal(
                        "42501",
                        f"refused by pgward: {leak.message}",
                        f"masking rules of policies {', '.join(grant.policies)} apply to this session; "
                        "pgward masks columns by where they come from and refuses what it cannot mask",
                        "select masked columns plainly (they come back masked), or ask for an exemption: "
                        + self.request_hint(grant.connection),
                    ),
                    touched,
                    [],
                )
        return None, touched, plans

    def _commit(self, session_id: int, opened: SessionState, state: SessionState) -> None:
        opened.prepared = state.prepared
        opened.created = state.created
        if state.paths != opened.paths:
            opened.paths = state.paths
            key = opened.grant.cache_key
            members = self._diverged.setdefault(key, set())
            first = not members
            members.add(session_id)
            if first:
                # Decisions cached before now assumed the key's own search_path for every session.
                for callback in self.on_cache_unsafe:
                    callback()

    def _statement(
        self,
        grant: SessionGrant,
        state: SessionState,
        a: Analysis,
        pinned: bool,
        decision: StatementDecision,
    ) -> Refusal | None:
        decision.classes = sorted(set(decision.classes) | a.classes)
        refusal = self._findings(grant, a, pinned, decision)
        if refusal is None and a.execute is not None:
            inner = state.prepared.get(a.execute)
            if not inner:
                return Refusal(
                    "42501",
                    f"EXECUTE {a.execute} refused: pgward did not allow a PREPARE of "
                    f'"{a.execute}" in this session',
                    hint="PREPARE the statement in this session first (through pgward)",
                )
            for prepared in inner:
                refusal = self._findings(grant, prepared, pinned, decision) or self._needs(
                    grant, state, prepared, decision
                )
                if refusal is not None:
                    return refusal
        if refusal is None and a.prepare is not None:
            name, inner_a = a.prepare
            decision.classes = sorted(set(decision.classes) | inner_a.classes)
            refusal = self._findings(grant, inner_a, pinned, decision) or self._needs(
                grant, state, inner_a, decision
            )
            if refusal is None:
                state.prepared.setdefault(name, []).append(inner_a)
        if refusal is None:
            refusal = self._needs(grant, state, a, decision)
        if refusal is not None:
            return refusal
        if a.deallocate == "*":
            state.prepared.clear()
        elif a.deallocate:
            state.prepared.pop(a.deallocate, None)
        for path in a.search_paths:
            value = grant.search_path if path is None else path
            if value not in state.paths:
                state.paths.append(value)
        return None

    def _findings(
        self, grant: SessionGrant, a: Analysis, pinned: bool, decision: StatementDecision
    ) -> Refusal | None:
        for f in a.findings:
            if f.only == ONLY_READ_ONLY and not grant.read_only:
                continue
            if f.only == ONLY_PINNED and not pinned:
                continue
            if f.guardrail is not None and f.guardrail not in grant.guardrails:
                held = grant.guardrail_approvals.get(f.guardrail)
                if held is not None:
                    decision.approvals.append(
                        ApprovalNeed(
                            held[0],
                            f"guardrail:{f.guardrail}",
                            held[1],
                            f.message,
                            f'policy "{held[0]}", guardrail {f.guardrail} (set to require_approval)',
                        )
                    )
                continue
            decision.policy, decision.rule = (
                None,
                f"guardrail:{f.guardrail}"
                if f.guardrail
                else ("read_only" if f.only == ONLY_READ_ONLY else "uncheckable"),
            )
            if f.guardrail is not None:
                detail = (
                    f"guardrail {f.guardrail} (on unless every policy that applies turns it off; "
                    f"policies: {', '.join(grant.policies)})"
                )
            elif f.only == ONLY_READ_ONLY:
                detail = f"this session is read-only: policies {', '.join(grant.policies)} allow only reading"
            else:
                detail = "pgward refuses what it cannot check"
            return Refusal(
                "42501", f"refused by pgward: {f.message}", detail, self.request_hint(grant.connection)
            )
        if grant.read_only and a.unknown_functions:
            ref = a.unknown_functions[0]
            decision.policy, decision.rule = None, "read_only"
            return Refusal(
                "42501",
                f"refused by pgward: function {ref}() is not known to be read-only, "
                "and this session is read-only",
                f"policies {', '.join(grant.policies)} allow only reading; a function can write or reach "
                "the server from inside a SELECT",
                self.request_hint(grant.connection),
            )
        return None

    def _needs(
        self, grant: SessionGrant, state: SessionState, a: Analysis, decision: StatementDecision
    ) -> Refusal | None:
        for need in a.needs:
            refusal = self._need(grant, state, need, decision)
            if refusal is not None:
                return refusal
        return None

    def _need(
        self, grant: SessionGrant, state: SessionState, need: Need, decision: StatementDecision
    ) -> Refusal | None:
        cls, obj = need.cls, need.obj
        if obj is None or obj.schema == "pg_temp":
            # Nothing named, or the session's own temporary objects.
            broad = obj is None and cls in BROAD_CLASSES
            return self._match(
                grant, cls, None, broad, decision, what=cls if obj is None else f"{cls} on {obj}"
            )
        if obj.schema is not None:
            candidates = [obj]
        else:
            candidates = self._resolve(state, obj)
            if not candidates:
                return None  # only the session's temporary objects can match this name
        for candidate in candidates:
            if candidate.schema in CATALOG_SCHEMAS and cls == "read" and candidate.kind == "relation":
                refusal = self._match(
                    grant, cls, candidate, False, decision, what=f"read on {candidate}", catalog=True
                )
            else:
                refusal = self._match(grant, cls, candidate, False, decision, what=f"{cls} on {candidate}")
                if refusal is None and cls in VIEW_EXPANDED_CLASSES and candidate.kind == "relation":
                    refusal = self._view(grant, cls, candidate, decision)
            if refusal is not None:
                if candidate is not obj and obj.schema is None:
                    paths = " or ".join(", ".join(p) for p in state.paths)
                    refusal = Refusal(
                        refusal.sqlstate,
                        refusal.message,
                        (refusal.detail or "") + f"; {obj} is unqualified and may resolve to {candidate} "
                        f"(search_path {paths})",
                        refusal.hint,
                    )
                return refusal
        return None

    def _view(
        self, grant: SessionGrant, cls: str, obj: ObjectRef, decision: StatementDecision
    ) -> Refusal | None:
        """If `obj` is a view, `cls` on it needs `cls` on every relation it reads (recursively)."""
        views = self.catalogs.get(grant.connection)
        if views is None or obj.schema is None:
            return None
        expansion = views.expand(obj.schema, obj.name)
        if expansion is None:
            return None
        if expansion.unreadable is not None:
            decision.policy, decision.rule = None, "uncheckable"
            return Refusal(
                "42501",
                f"refused by pgward: {expansion.unreadable}, so it cannot check what {obj} reads",
                "pgward refuses what it cannot check",
                self.request_hint(grant.connection),
            )
        for item in expansion.reads:
            base = item.relation
            through = "".join(f" (through view {v})" for v in item.via[-1:])
            verb = "reads" if cls == "read" else f"({cls}) reaches"
            what = f"view {obj} {verb} {base}{through}"
            catalog = base.schema in CATALOG_SCHEMAS and cls == "read"
            refusal = self._match(grant, cls, base, False, decision, what=what, catalog=catalog, clause=True)
            if refusal is not None:
                return refusal
        return None

    def _resolve(self, state: SessionState, obj: ObjectRef) -> list[ObjectRef]:
        """Every object an unqualified name may resolve to under any search_path the session may have."""
        out: list[ObjectRef] = []
        role = state.grant.login_role
        for path in state.paths:
            schemas = [role if s in ('"$user"', "$user") else s for s in path]
            if "pg_catalog" not in schemas:
                schemas.insert(0, "pg_catalog")
            for schema in schemas:
                if schema == "pg_catalog" and obj.kind == "relation" and obj.name in CATALOG_RELATIONS:
                    # Found in pg_catalog: schemas after it are never reached.
                    ref = ObjectRef(schema, obj.name, obj.kind)
                    if ref not in out:
                        out.append(ref)
                    break
                if schema == "pg_temp" or not schema:
                    continue
                # Every relation in pg_catalog is named pg_*; other names cannot resolve there.
                if schema == "pg_catalog" and obj.kind == "relation" and not obj.name.startswith("pg_"):
                    continue
                ref = ObjectRef(schema, obj.name, obj.kind)
                if ref not in out:
                    out.append(ref)
        return out

    def _match(
        self,
        grant: SessionGrant,
        cls: str,
        obj: ObjectRef | None,
        broad: bool,
        decision: StatementDecision,
        *,
        what: str,
        catalog: bool = False,
        clause: bool = False,
    ) -> Refusal | None:
        # `what` is a noun phrase ("read on t"), or with `clause` a sentence ("view v reads t") that the
        # verdict joins with ", which".
        what = f"{what}, which" if clause else what
        if obj is not None:
            name = str(obj)
            if name not in decision.tables:
                decision.tables.append(name)
        # Deny rules win over approval rules whatever their order.
        for action in ("deny", "require_approval"):
            for rule in grant.rules:
                if rule.action != action or cls not in rule.classes:
                    continue
                if obj is None and not broad and rule.patterns is not None:
                    continue
                if obj is not None and not rule.covers(obj):
                    continue
                if rule.action == "deny":
                    decision.policy, decision.rule = rule.policy, rule.label
                    return Refusal(
                        "42501",
                        f"refused by pgward: {what} is denied by policy",
                        f"denied by {rule.describe()}",
                        self.request_hint(grant.connection),
                    )
                # Allowed once approved: the rest of the statement is still checked.
                assert rule.approval is not None
                decision.approvals.append(
                    ApprovalNeed(
                        rule.policy, rule.label, rule.approval, what.removesuffix(", which"), rule.describe()
                    )
                )
                return None
        for rule in grant.rules:
            if rule.action != "allow" or cls not in rule.classes:
                continue
            if obj is None and broad and rule.patterns is not None:
                continue
            if obj is not None and not rule.covers(obj):
                continue
            label = f"{rule.policy}/{rule.label}"
            if label not in decision.matched:
                decision.matched.append(label)
            if decision.policy is None:
                decision.policy, decision.rule = rule.policy, rule.label
            return None
        if obj is None and cls in IMPLICIT_CLASSES:
            return None
        if catalog and grant.may_read:
            label = "catalog/read"
            if label not in decision.matched:
                decision.matched.append(label)
            return None
        policies = ", ".join(grant.policies)
        scope = "read-only " if grant.read_only else ""
        decision.policy, decision.rule = None, None
        return Refusal(
            "42501",
            f"refused by pgward: {what} is not allowed for {grant.identity.username}",
            f"no rule of the policies that apply allows it ({policies}; {scope}scope)",
            self.request_hint(grant.connection),
        )


def _detectors_refusal(statements: Sequence[Analysis]) -> Refusal | None:
    """Content detectors scan result rows; COPY … TO output has no rows to scan, so a session with
    detectors (and no masked columns, whose refusals already cover COPY) refuses it."""
    for a in statements:
        if "copy_out" in a.classes:
            return Refusal(
                "42501",
                "refused by pgward: COPY … TO is not available in a session with content detectors "
                "(they scan result rows, not COPY data)",
                hint="use SELECT; its rows are scanned",
            )
    return None


def _merged(needs: Sequence[ApprovalNeed]) -> ApprovalNeed:
    """One approval for a statement several rules send for review: the first rule's approvers decide,
    with the strictest of every rule's settings (most approvals, shortest times, reason if any asks,
    break-glass only if all allow it, held if any holds)."""
    first = needs[0]
    if len(needs) == 1:
        return first
    approvals = [n.approval for n in needs]
    seconds = duration_seconds
    merged = first.approval.model_copy(
        update={
            "mode": "held" if any(a.mode == "held" for a in approvals) else "deferred",
            "approvals_required": max(a.approvals_required for a in approvals),
            "reason_required": any(a.reason_required for a in approvals),
            "timeout": min((a.timeout for a in approvals), key=seconds),
            "valid_for": min((a.valid_for for a in approvals), key=seconds),
            "break_glass": all(a.break_glass for a in approvals),
        }
    )
    return ApprovalNeed(
        first.policy,
        first.rule,
        merged,
        "; ".join(dict.fromkeys(n.what for n in needs)),
        "; ".join(dict.fromkeys(n.source for n in needs)),
    )


def deny_all_engine() -> PolicyEngine:
    """An engine with no policies (every session refused): what a broken store leaves in force."""
    return PolicyEngine(PolicySet.build(()))


def docs_from(items: Sequence[Mapping[str, Any]]) -> list[PolicyDocument]:
    return [PolicyDocument.model_validate(item) for item in items]
