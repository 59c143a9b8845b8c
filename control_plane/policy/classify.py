"""Statement classification with libpg_query (pglast's JSON parse tree): classes, objects, guardrails.

Works on the JSON form of the parse tree: building pglast's Python AST costs ~8x more, and the
decision budget is a few hundred microseconds per uncached statement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as pg_parser
from pglast.parser import ParseError

from control_plane.policy import functions as fn

CACHE_NONE, CACHE_TEXT, CACHE_FINGERPRINT = 0, 1, 2
CACHE_NAMES = {CACHE_NONE: "none", CACHE_TEXT: "text", CACHE_FINGERPRINT: "fingerprint"}

# Conditions under which a finding refuses: always, or only in scopes of a certain shape.
ONLY_READ_ONLY = "read_only"  # the scope is read-only
ONLY_PINNED = "pinned"  # the scope has run_as or session_context the client must not undo


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A relation or function a statement names; schema None = unqualified (found via search_path)."""

    schema: str | None
    name: str
    kind: str = "relation"

    def __str__(self) -> str:
        return f"{_quote(self.schema)}.{_quote(self.name)}" if self.schema else _quote(self.name)


@dataclass(frozen=True, slots=True)
class Need:
    """One thing a statement does that some rule must allow: a class, on an object or on nothing."""

    cls: str
    obj: ObjectRef | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a guardrail (or a scope property) refuses. `guardrail` None = refused always."""

    guardrail: str | None
    message: str
    only: str | None = None


@dataclass
class Analysis:
    """What one statement does, as far as decisions are concerned."""

    kind: str
    text: str
    classes: set[str] = field(default_factory=set)
    needs: list[Need] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    cache: int = CACHE_FINGERPRINT
    # New search_path values this statement may install (None: back to the session's initial path).
    search_paths: list[tuple[str, ...] | None] = field(default_factory=list)
    # Functions called that pgward does not know to be read-only (a read-only scope refuses them).
    unknown_functions: list[ObjectRef] = field(default_factory=list)
    prepare: tuple[str, Analysis] | None = None
    execute: str | None = None
    deallocate: str | None = None  # a name, or "*" for DEALLOCATE ALL / DISCARD ALL
    unqualified: bool = False  # names an unqualified object, so the decision depends on search_path
    node: dict[str, Any] | None = None  # the statement's parse tree (masked sessions analyse it again)

    def need(self, cls: str, obj: ObjectRef | None = None) -> None:
        self.classes.add(cls)
        self.needs.append(Need(cls, obj))
        if obj is not None and obj.schema is None:
            self.unqualified = True

    def find(self, guardrail: str | None, message: str, only: str | None = None) -> None:
        self.findings.append(Finding(guardrail, message, only))

    def at_most(self, cache: int) -> None:
        self.cache = min(self.cache, cache)


class Unparsable(Exception):
    """The PostgreSQL parser rejected the text; `message` is its error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _quote(name: str) -> str:
    if name and name.replace("_", "a").isalnum() and name == name.lower() and not name[0].isdigit():
        return name
    return '"' + name.replace('"', '""') + '"'


def parse(sql: str) -> list[tuple[dict[str, Any] | None, str]]:
    """(parse tree node or None for an empty statement, text) of every statement in `sql`."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
    except ParseError as e:
        raise Unparsable(str(e.args[0]) if e.args else str(e)) from None
    encoded = sql.encode()
    out: list[tuple[dict[str, Any] | None, str]] = []
    for item in tree.get("stmts", []):
        start = item.get("stmt_location", 0)
        length = item.get("stmt_len", 0)
        end = start + length if length else len(encoded)
        out.append((item.get("stmt"), encoded[start:end].decode(errors="replace").strip()))
    return out


def analyze(sql: str) -> list[Analysis]:
    """Classify every statement of a Query string (raises Unparsable)."""
    return [analyze_node(node, text) for node, text in parse(sql)]


def analyze_node(node: dict[str, Any] | None, text: str) -> Analysis:
    if not node:
        return Analysis(kind="Empty", text=text)
    ((kind, body),) = node.items()
    a = Analysis(kind=kind, text=text, node=node)
    _Walker(a).statement(kind, body)
    return a


# --- helpers over the JSON tree -------------------------------------------------------------------


def _names(items: list[Any] | None) -> list[str]:
    return [i["String"]["sval"] for i in items or () if isinstance(i, dict) and "String" in i]


def _const(node: Any) -> tuple[bool, Any]:
    """(is a constant, its Python value) of an A_Const (possibly under casts)."""
    if not isinstance(node, dict):
        return False, None
    if "TypeCast" in node:
        ok, value = _const(node["TypeCast"].get("arg"))
        if not ok:
            return False, None
        type_name = (_names(node["TypeCast"].get("typeName", {}).get("names")) or [""])[-1]
        if type_name in ("bool", "boolean") and isinstance(value, str):
            return _bool_text(value)
        return True, value
    if "A_Const" not in node:
        return False, None
    c = node["A_Const"]
    if c.get("isnull"):
        return True, None
    if "boolval" in c:
        return True, bool(c["boolval"].get("boolval", False))
    if "ival" in c:
        return True, int(c["ival"].get("ival", 0))
    if "fval" in c:
        return True, c["fval"].get("fval")
    if "sval" in c:
        return True, c["sval"].get("sval", "")
    if "bsval" in c:
        return True, c["bsval"].get("bsval", "")
    return True, None


def _bool_text(value: str) -> tuple[bool, Any]:
    v = value.strip().lower()
    if v in ("t", "true", "on", "yes", "y", "1"):
        return True, True
    if v in ("f", "false", "off", "no", "n", "0"):
        return True, False
    return False, None


def _truthy_setting(node: Any) -> bool | None:
    """A SET/set_config value read as a boolean (None: not a constant boolean)."""
    ok, value = _const(node)
    if not ok:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        ok, b = _bool_text(value)
        return b if ok else None
    return None


_OPS = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class _Truth:
    """Whether a WHERE clause is true for every row, looking only at constants and self-comparisons."""

    def __init__(self) -> None:
        self.used_constants = False

    def value(self, node: Any) -> bool | None:
        """True/False when the expression is that for every row; None when it depends on the row."""
        if not isinstance(node, dict):
            return None
        ok, v = _const(node)
        if ok:
            self.used_constants = True
            if isinstance(v, bool):
                return v
            return None
        if "BoolExpr" in node:
            b = node["BoolExpr"]
            args = [self.value(x) for x in b.get("args", [])]
            op = b.get("boolop")
            if op == "AND_EXPR":
                if any(x is False for x in args):
                    return False
                return True if all(x is True for x in args) else None
            if op == "OR_EXPR":
                if any(x is True for x in args):
                    return True
                return False if all(x is False for x in args) else None
            if op == "NOT_EXPR" and args:
                return None if args[0] is None else not args[0]
            return None
        if "A_Expr" in node:
            e = node["A_Expr"]
            if e.get("kind") != "AEXPR_OP":
                return None
            op = (_names(e.get("name")) or [""])[-1]
            left, right = e.get("lexpr"), e.get("rexpr")
            lok, lv = _const(left)
            rok, rv = _const(right)
            if lok and rok:
                self.used_constants = True
                compare = _OPS.get(op)
                if compare is None or lv is None or rv is None:
                    return None
                try:
                    return bool(compare(lv, rv))
                except TypeError:
                    # '1' = 1 style: PostgreSQL coerces the unknown literal; compare as text.
                    return bool(compare(str(lv), str(rv)))
            # `col = col` holds for every row where col is not null: as unbounded as it gets.
            if (
                op in ("=", "<=", ">=")
                and isinstance(left, dict)
                and isinstance(right, dict)
                and "ColumnRef" in left
                and "ColumnRef" in right
                and left["ColumnRef"].get("fields") == right["ColumnRef"].get("fields")
                and _names(left["ColumnRef"].get("fields"))
            ):
                return True
            return None
        if "NullTest" in node:
            n = node["NullTest"]
            ok, v = _const(n.get("arg"))
            if ok:
                self.used_constants = True
                is_null = v is None
                return is_null if n.get("nulltesttype") == "IS_NULL" else not is_null
            return None
        if "BooleanTest" in node:
            t = node["BooleanTest"]
            inner = self.value(t.get("arg"))
            if inner is None:
                return None
            kind = t.get("booltesttype")
            return {
                "IS_TRUE": inner,
                "IS_NOT_FALSE": inner,
                "IS_FALSE": not inner,
                "IS_NOT_TRUE": not inner,
            }.get(kind)
        return None


def _is_column(node: Any, name: str) -> bool:
    return isinstance(node, dict) and _names(node.get("ColumnRef", {}).get("fields")) == [name]


def _pg_settings_name(body: dict[str, Any]) -> str | None:
    """x of `… FROM [pg_catalog.]pg_settings WHERE name = 'x'` (one row at most: name is its key)."""
    sources = body.get("fromClause") or []
    if len(sources) != 1 or "RangeVar" not in sources[0]:
        return None
    rel = sources[0]["RangeVar"]
    if rel.get("relname") != "pg_settings" or rel.get("schemaname") not in (None, "pg_catalog"):
        return None
    where = (body.get("whereClause") or {}).get("A_Expr")
    if not where or where.get("kind") != "AEXPR_OP" or _names(where.get("name")) != ["="]:
        return None
    for column, value in ((where.get("lexpr"), where.get("rexpr")), (where.get("rexpr"), where.get("lexpr"))):
        ok, v = _const(value)
        if _is_column(column, "name") and ok and isinstance(v, str):
            return v
    return None


def parse_search_path(value: str) -> tuple[str, ...]:
    """The schemas of a search_path string (`a, "B", "$user"`), as PostgreSQL splits it."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j = i + 1
            buf = []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(value[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            out.append(value[i:j].lower())
            i = j
    return tuple(out)


_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")

# Statement types by class; anything not listed is `admin` (fail closed).
_DDL = frozenset(
    """
    CreateStmt AlterTableStmt IndexStmt ViewStmt CreateSeqStmt AlterSeqStmt CreateSchemaStmt
    CreateFunctionStmt AlterFunctionStmt CreateTrigStmt RuleStmt CommentStmt RenameStmt
    AlterObjectSchemaStmt CompositeTypeStmt CreateEnumStmt AlterEnumStmt CreateDomainStmt
    AlterDomainStmt DefineStmt CreatePolicyStmt AlterPolicyStmt CreateStatsStmt AlterStatsStmt
    CreateForeignTableStmt CreateRangeStmt AlterTypeStmt CreateExtensionStmt AlterExtensionStmt
    AlterExtensionContentsStmt CreateCastStmt CreateOpClassStmt CreateOpFamilyStmt AlterOpFamilyStmt
    CreateConversionStmt CreateTransformStmt AlterCollationStmt AlterTableMoveAllStmt
    AlterOperatorStmt CreateAmStmt AlterTSDictionaryStmt AlterTSConfigurationStmt
    """.split()
)
_DESTRUCTIVE = frozenset(
    {"DropStmt", "TruncateStmt", "DropdbStmt", "DropTableSpaceStmt", "DropSubscriptionStmt"}
)
_ADMIN = frozenset(
    """
    CreateRoleStmt AlterRoleStmt AlterRoleSetStmt DropRoleStmt GrantStmt GrantRoleStmt AlterSystemStmt
    ReassignOwnedStmt DropOwnedStmt AlterOwnerStmt AlterDefaultPrivilegesStmt CreatedbStmt
    AlterDatabaseStmt AlterDatabaseSetStmt AlterDatabaseRefreshCollStmt CreateTableSpaceStmt
    AlterTableSpaceOptionsStmt LoadStmt CheckPointStmt CreateFdwStmt AlterFdwStmt
    CreateForeignServerStmt AlterForeignServerStmt CreateUserMappingStmt AlterUserMappingStmt
    DropUserMappingStmt ImportForeignSchemaStmt CreateEventTrigStmt AlterEventTrigStmt
    CreatePLangStmt CreatePublicationStmt AlterPublicationStmt CreateSubscriptionStmt
    AlterSubscriptionStmt SecLabelStmt AlterSystemStmt
    """.split()
)
_SESSION = frozenset({"VariableShowStmt", "ListenStmt", "UnlistenStmt", "DeallocateStmt"})
_UTILITY = frozenset({"VacuumStmt", "ClusterStmt", "ReindexStmt"})
_RELATION_DROPS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_SEQUENCE",
        "OBJECT_INDEX",
        "OBJECT_FOREIGN_TABLE",
    }
)
# LOCK modes up to ACCESS SHARE (1) only read; pg_dump takes exactly that.
_ACCESS_SHARE = 1


class _Walker:
    """Collects the needs and findings of one top-level statement into an Analysis."""

    def __init__(self, a: Analysis) -> None:
        self.a = a
        self.ctes: list[frozenset[str]] = []
        # `SELECT set_config(name, …) FROM pg_settings WHERE name = 'x'` (pg_dump): the setting is x.
        self.settings_name: str | None = None

    # --- top level ---------------------------------------------------------------------------------

    def statement(self, kind: str, body: dict[str, Any]) -> None:
        a = self.a
        handler = getattr(self, f"_s_{kind}", None)
        if handler is not None:
            handler(body)
            return
        if kind in _DDL:
            self._ddl(kind, body, "ddl")
        elif kind in _DESTRUCTIVE:
            self._ddl(kind, body, "destructive_ddl")
        elif kind in _SESSION:
            a.need("session")
            if kind == "DeallocateStmt":
                a.deallocate = "*" if body.get("isall") else body.get("name")
                a.at_most(CACHE_NONE)
            if kind in ("ListenStmt", "UnlistenStmt"):
                a.at_most(CACHE_TEXT)
        elif kind in _UTILITY:
            a.need("utility")
            self._targets(body, "utility")
        else:
            # Administrative, or a statement type pgward does not know: the strictest class either way.
            self._ddl(kind, body, "admin")
            if kind == "AlterSystemStmt":
                a.find("no_alter_system", "ALTER SYSTEM changes the server's configuration")
            if kind == "LoadStmt":
                a.find("no_server_file_access", "LOAD loads a shared library from the server's file system")

    def _s_SelectStmt(self, body: dict[str, Any]) -> None:
        into = body.get("intoClause")
        if into:
            # SELECT … INTO creates a table and fills it.
            rel = self._ref(into.get("rel", {}))
            self.a.need("ddl", rel)
            self.a.need("write", rel)
            body = {k: v for k, v in body.items() if k != "intoClause"}
        self.a.need("read")
        self.settings_name = _pg_settings_name(body)
        self._select(body)

    def _s_InsertStmt(self, body: dict[str, Any]) -> None:
        self._dml("InsertStmt", body)

    def _s_UpdateStmt(self, body: dict[str, Any]) -> None:
        self._dml("UpdateStmt", body)

    def _s_DeleteStmt(self, body: dict[str, Any]) -> None:
        self._dml("DeleteStmt", body)

    def _s_MergeStmt(self, body: dict[str, Any]) -> None:
        self._dml("MergeStmt", body)

    def _s_CreateTableAsStmt(self, body: dict[str, Any]) -> None:
        rel = self._ref(body.get("into", {}).get("rel", {}))
        is_matview = body.get("objtype") == "OBJECT_MATVIEW"
        self.a.need("ddl", rel)
        if not is_matview or not body.get("into", {}).get("skipData"):
            self.a.need("write", rel)
        self.visit(body.get("query"))

    def _s_ViewStmt(self, body: dict[str, Any]) -> None:
        self.a.need("ddl", self._ref(body.get("view", {})))
        # The view's query names what it will read: the creator must be allowed to read it.
        self.visit(body.get("query"))

    def _s_RefreshMatViewStmt(self, body: dict[str, Any]) -> None:
        self.a.need("write", self._ref(body.get("relation", {})))

    def _s_CopyStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.at_most(CACHE_TEXT)
        cls = "copy_in" if body.get("is_from") else "copy_out"
        a.classes.add(cls)
        if body.get("relation"):
            a.need(cls, self._ref(body["relation"]))
        else:
            a.need(cls)
        if body.get("query"):
            self.visit(body["query"])
        if body.get("whereClause"):
            self.visit(body["whereClause"])
        if body.get("is_program"):
            a.find("no_server_file_access", "COPY … PROGRAM runs a program on the database server")
        elif body.get("filename"):
            a.find("no_server_file_access", "COPY to or from a file on the database server")

    def _s_ExplainStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        analyze = False
        for opt in body.get("options") or ():
            d = opt.get("DefElem", {})
            if d.get("defname") == "analyze":
                a.at_most(CACHE_TEXT)
                arg = d.get("arg")
                if arg is None:
                    analyze = True
                else:
                    value = arg.get("String", {}).get("sval") if "String" in arg else None
                    ok, truth = _bool_text(value) if isinstance(value, str) else _const(arg)
                    analyze = truth is not False if ok else True
        query = body.get("query") or {}
        if analyze:
            # EXPLAIN ANALYZE runs its statement: decide it as if it were run directly.
            for inner_kind, inner in query.items():
                self.statement(inner_kind, inner)
        else:
            # Only planned, but the plan reveals the objects: reading them must be allowed.
            inner_a = Analysis(kind="", text="")
            inner_walker = _Walker(inner_a)
            for inner_kind, inner in query.items():
                inner_walker.statement(inner_kind, inner)
            for need in inner_a.needs:
                if need.obj is not None:
                    a.need("read" if need.obj.kind == "relation" else "function_call", need.obj)
            a.unqualified = a.unqualified or inner_a.unqualified
            a.at_most(inner_a.cache)
        # After the inner statement's needs, so a refusal names what the statement would have done.
        a.need("utility")

    def _s_VariableSetStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.need("session")
        a.at_most(CACHE_TEXT)  # SET x = 'a' and SET x = 'b' share a fingerprint
        name = (body.get("name") or "").lower()
        kind = body.get("kind")
        args = body.get("args") or []
        if kind == "VAR_RESET_ALL":
            self._reset_all("RESET ALL")
            return
        if name in fn.ROLE_SETTINGS:
            what = "SET SESSION AUTHORIZATION" if name == "session_authorization" else "SET ROLE"
            if kind == "VAR_RESET" or kind == "VAR_SET_DEFAULT":
                what = "RESET " + ("SESSION AUTHORIZATION" if name == "session_authorization" else "ROLE")
            a.find("no_role_escape", f"{what} would change the role pgward set for this session")
        elif name.startswith("pgward."):
            a.find("no_role_escape", f"{name} is pgward's session context and cannot be changed")
        elif name in fn.READ_ONLY_SETTINGS:
            truth = _truthy_setting(args[0]) if kind == "VAR_SET_VALUE" and args else None
            if truth is not True:
                a.find(None, f"changing {name} would turn off read-only mode", ONLY_READ_ONLY)
        elif name in ("transaction", "session characteristics"):
            for arg in args:
                d = arg.get("DefElem", {})
                if d.get("defname") == "transaction_read_only" and _truthy_setting(d.get("arg")) is not True:
                    a.find(
                        None, f"SET {name.upper()} … READ WRITE would turn off read-only mode", ONLY_READ_ONLY
                    )
        elif name == "search_path":
            a.at_most(CACHE_NONE)
            if kind == "VAR_SET_VALUE":
                values = []
                for arg in args:
                    ok, v = _const(arg)
                    if not ok or not isinstance(v, str):
                        a.find(None, "SET search_path needs constant schema names")
                        return
                    # Each SET argument is one schema name, exactly as written (no splitting, no folding).
                    values.append(v)
                a.search_paths.append(tuple(values))
            elif kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
                a.search_paths.append(None)
            else:
                # SET search_path FROM CURRENT keeps the current value: nothing new.
                pass

    def _s_DiscardStmt(self, body: dict[str, Any]) -> None:
        self.a.need("session")
        if body.get("target") == "DISCARD_ALL":
            self._reset_all("DISCARD ALL")
            self.a.deallocate = "*"
        elif body.get("target") == "DISCARD_PLANS":
            pass

    def _reset_all(self, what: str) -> None:
        a = self.a
        a.at_most(CACHE_NONE)
        a.search_paths.append(None)
        a.find(
            "no_role_escape",
            f"{what} would undo the role and context pgward set for this session",
            ONLY_PINNED,
        )
        a.find(None, f"{what} would turn off read-only mode", ONLY_READ_ONLY)

    def _s_TransactionStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.need("transaction")
        for opt in body.get("options") or ():
            d = opt.get("DefElem", {})
            if d.get("defname") == "transaction_read_only":
                a.at_most(CACHE_TEXT)
                if _truthy_setting(d.get("arg")) is not True:
                    a.find(None, "a READ WRITE transaction would turn off read-only mode", ONLY_READ_ONLY)

    def _s_LockStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.at_most(CACHE_TEXT)
        cls = "read" if int(body.get("mode", 8)) <= _ACCESS_SHARE else "write"
        a.classes.add("transaction")
        for rel in body.get("relations") or ():
            a.need(cls, self._ref(rel.get("RangeVar", rel)))

    def _s_PrepareStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.need("session")
        a.at_most(CACHE_NONE)  # pgward records which names were allowed
        inner_node = body.get("query")
        inner = analyze_node(inner_node, a.text)
        if inner.search_paths or inner.prepare or inner.execute:
            a.find(None, "PREPARE of a statement that changes session state is not supported through pgward")
        a.prepare = (body.get("name", ""), inner)

    def _s_ExecuteStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.need("session")
        a.at_most(CACHE_NONE)  # allowed only when this session's PREPARE of the name was
        a.execute = body.get("name", "")
        self.visit(body.get("params"))

    def _s_DeclareCursorStmt(self, body: dict[str, Any]) -> None:
        query = body.get("query") or {}
        for inner_kind, inner in query.items():
            self.statement(inner_kind, inner)

    def _s_FetchStmt(self, body: dict[str, Any]) -> None:
        # The cursor's query was decided at DECLARE.
        self.a.need("read")

    def _s_ClosePortalStmt(self, body: dict[str, Any]) -> None:
        self.a.need("read")

    def _s_DoStmt(self, body: dict[str, Any]) -> None:
        # Arbitrary procedural code: only an unrestricted function_call allow covers it.
        self.a.need("function_call")

    def _s_CallStmt(self, body: dict[str, Any]) -> None:
        call = body.get("funccall") or {}
        names = _names(call.get("funcname"))
        ref = ObjectRef(names[-2] if len(names) > 1 else None, names[-1] if names else "", "function")
        self.a.need("function_call", ref)
        self.visit(call.get("args"))

    def _s_NotifyStmt(self, body: dict[str, Any]) -> None:
        self.a.need("session")
        self.a.unknown_functions.append(ObjectRef("pg_catalog", "pg_notify", "function"))

    def _s_ConstraintsSetStmt(self, body: dict[str, Any]) -> None:
        self.a.need("transaction")

    def _s_VacuumStmt(self, body: dict[str, Any]) -> None:
        a = self.a
        a.need("utility")
        for rel in body.get("rels") or ():
            inner = rel.get("VacuumRelation", rel).get("relation")
            if inner:
                a.need("utility", self._ref(inner))

    def _s_DropdbStmt(self, body: dict[str, Any]) -> None:
        self.a.need("destructive_ddl")
        self.a.need("admin")
        self.a.find("no_drop_database", f"DROP DATABASE {body.get('dbname', '')} deletes a whole database")

    # --- shared pieces -----------------------------------------------------------------------------

    def _ddl(self, kind: str, body: dict[str, Any], cls: str) -> None:
        a = self.a
        targets = self._targets(body, cls)
        if kind == "DropStmt" and body.get("removeType") in _RELATION_DROPS:
            for obj in body.get("objects") or ():
                names = _names(obj.get("List", {}).get("items"))
                if names:
                    schema = names[-2] if len(names) > 1 else None
                    a.need(cls, ObjectRef(schema, names[-1]))
                    targets += 1
        elif kind == "DropStmt" and body.get("removeType") in (
            "OBJECT_FUNCTION",
            "OBJECT_PROCEDURE",
            "OBJECT_ROUTINE",
        ):
            for obj in body.get("objects") or ():
                names = _names(obj.get("ObjectWithArgs", {}).get("objname"))
                if names:
                    a.need(cls, ObjectRef(names[-2] if len(names) > 1 else None, names[-1], "function"))
                    targets += 1
        elif kind == "CreateFunctionStmt":
            names = _names(body.get("funcname"))
            if names:
                a.need(cls, ObjectRef(names[-2] if len(names) > 1 else None, names[-1], "function"))
                targets += 1
        if kind == "TruncateStmt":
            for rel in body.get("relations") or ():
                a.need(cls, self._ref(rel.get("RangeVar", rel)))
                targets += 1
        if kind == "GrantStmt" and body.get("objtype") == "OBJECT_TABLE":
            for rel in body.get("objects") or ():
                if "RangeVar" in rel:
                    a.need(cls, self._ref(rel["RangeVar"]))
                    targets += 1
        if not targets:
            a.need(cls)
        # Expressions inside DDL (defaults, CHECKs, view queries, REFERENCES) read what they name.
        self._visit_rest(body, skip=("relation", "relations", "objects", "view", "sequence", "table"))

    def _targets(self, body: dict[str, Any], cls: str) -> int:
        """Needs for the object a DDL/utility statement acts on (`relation`, `view`, …)."""
        count = 0
        for key in ("relation", "view", "sequence", "table"):
            rel = body.get(key)
            if isinstance(rel, dict) and "relname" in rel:
                self.a.need(cls, self._ref(rel))
                count += 1
        return count

    def _dml(self, kind: str, body: dict[str, Any]) -> None:
        a = self.a
        pushed = self._push_ctes(body.get("withClause"))
        try:
            target = self._ref(body.get("relation", {}))
            a.need("write", target)
            if kind in ("UpdateStmt", "DeleteStmt"):
                where = body.get("whereClause")
                verb = "UPDATE" if kind == "UpdateStmt" else "DELETE"
                if where is None:
                    a.find("no_unbounded_write", f"{verb} without WHERE changes every row of {target}")
                else:
                    truth = _Truth()
                    if truth.value(where) is True:
                        a.find(
                            "no_unbounded_write",
                            f"{verb} with an always-true WHERE changes every row of {target}",
                        )
                    if truth.used_constants:
                        # `WHERE id = 1` and `WHERE 1 = 1` differ, but `WHERE 1 = 1` and `WHERE 1 = 2` share
                        # a fingerprint: the decision depends on constants.
                        a.at_most(CACHE_TEXT)
            for key, value in body.items():
                if key not in ("relation", "withClause"):
                    self.visit(value)
        finally:
            if pushed:
                self.ctes.pop()

    def _select(self, body: dict[str, Any]) -> None:
        pushed = self._push_ctes(body.get("withClause"))
        try:
            for key, value in body.items():
                if key != "withClause":
                    self.visit(value)
        finally:
            if pushed:
                self.ctes.pop()

    def _push_ctes(self, with_clause: dict[str, Any] | None) -> bool:
        if not with_clause:
            return False
        ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes") or ()]
        names = [c.get("ctename", "") for c in ctes]
        recursive = bool(with_clause.get("recursive"))
        # Without RECURSIVE, a CTE sees only the CTEs before it: a later name is still a table.
        for i, cte in enumerate(ctes):
            visible = frozenset(names if recursive else names[:i])
            self.ctes.append(visible)
            try:
                query = cte.get("ctequery") or {}
                for inner_kind, inner in query.items():
                    if inner_kind in _DML:
                        # A data-modifying CTE is a write, whatever the outer statement is.
                        self.a.at_most(CACHE_TEXT)
                        self._dml(inner_kind, inner)
                    else:
                        self.visit({inner_kind: inner})
            finally:
                self.ctes.pop()
        self.ctes.append(frozenset(names))
        return True

    def _ref(self, rel: dict[str, Any]) -> ObjectRef:
        schema = rel.get("schemaname")
        if rel.get("relpersistence") == "t" and schema is None:
            schema = "pg_temp"
        return ObjectRef(schema, rel.get("relname", ""))

    def _visit_rest(self, body: dict[str, Any], skip: tuple[str, ...]) -> None:
        for key, value in body.items():
            if key not in skip:
                self.visit(value)

    # --- generic walk ------------------------------------------------------------------------------

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            ((key, body),) = node.items()
            if key[:1].isupper() and isinstance(body, dict):
                self._typed(key, body)
                return
        self._body(node)

    def _typed(self, kind: str, body: dict[str, Any]) -> None:
        if kind in _DML:
            self.a.at_most(CACHE_TEXT)
            self._dml(kind, body)
        elif kind == "SelectStmt":
            self._select(body)
        elif kind == "RangeVar":
            self._relation(body)
        elif kind == "FuncCall":
            self._function(body)
        elif kind == "SubLink":
            self.visit(body.get("subselect"))
            self.visit(body.get("testexpr"))
        else:
            self._body(body)

    def _body(self, body: dict[str, Any]) -> None:
        if "relname" in body:
            self._relation(body)
            return
        if "withClause" in body:
            # A bare SelectStmt body (UNION arms are not wrapped).
            self._select(body)
            return
        if "funcname" in body and "funcformat" in body:
            self._function(body)
            return
        for value in body.values():
            if isinstance(value, dict | list):
                self.visit(value)

    def _relation(self, rel: dict[str, Any]) -> None:
        name = rel.get("relname", "")
        schema = rel.get("schemaname")
        if schema is None and any(name in scope for scope in self.ctes):
            return  # a CTE, not a table
        self.a.need("read", self._ref(rel))

    def _function(self, call: dict[str, Any]) -> None:
        names = _names(call.get("funcname"))
        if names:
            self._call(names[-2] if len(names) > 1 else None, names[-1])
        for key, value in call.items():
            if key == "args" and names and names[-1] == "set_config":
                continue  # looked at by _set_config; constants only
            if key != "funcname":
                self.visit(value)
        if names and names[-1] == "set_config" and (len(names) == 1 or names[-2] == "pg_catalog"):
            self._set_config(call.get("args") or [])

    def _call(self, schema: str | None, name: str) -> None:
        a = self.a
        if fn.is_server_access(name):
            # Any schema: dblink and friends live wherever their extension was installed.
            a.find("no_server_file_access", f"{name}() reaches the database server's files or other servers")
            return
        if schema == "information_schema":
            return  # its helper functions only read the catalogs
        if schema in (None, "pg_catalog") and fn.is_builtin(name):
            if schema is None:
                a.unqualified = True  # resolves to pg_catalog only while pg_catalog comes first
            if name in fn.SQL_TEXT_FUNCTIONS:
                a.find(None, f"{name}() runs SQL given as text, which pgward cannot check")
            elif name in fn.WRITE_FUNCTIONS:
                a.need("write")
                a.unknown_functions.append(ObjectRef("pg_catalog", name, "function"))
                a.at_most(CACHE_TEXT)
            elif name in fn.ADMIN_FUNCTIONS:
                a.need("admin")
                a.unknown_functions.append(ObjectRef("pg_catalog", name, "function"))
            return
        # A user function, or a pg_catalog one pgward does not know: it may write or act on the server.
        ref = ObjectRef(schema, name, "function")
        a.need("function_call", ref)
        a.unknown_functions.append(ref)

    def _set_config(self, args: list[Any]) -> None:
        a = self.a
        # set_config('search_path', …) and set_config('role', …) share a fingerprint.
        a.at_most(CACHE_TEXT)
        ok, setting = _const(args[0]) if args else (False, None)
        if not ok and args and self.settings_name and _is_column(args[0], "name"):
            ok, setting = True, self.settings_name
        if not ok or not isinstance(setting, str):
            a.find(None, "set_config() with a setting name that is not a constant cannot be checked")
            return
        setting = setting.lower()
        value = args[1] if len(args) > 1 else None
        if setting in fn.ROLE_SETTINGS:
            a.find(
                "no_role_escape",
                f"set_config('{setting}', …) would change the role pgward set for this session",
            )
        elif setting.startswith("pgward."):
            a.find("no_role_escape", f"set_config('{setting}', …) would change pgward's session context")
        elif setting in fn.READ_ONLY_SETTINGS:
            if _truthy_setting(value) is not True:
                a.find(None, f"set_config('{setting}', …) would turn off read-only mode", ONLY_READ_ONLY)
        elif setting == "search_path":
            a.at_most(CACHE_NONE)
            ok, v = _const(value)
            if not ok or not isinstance(v, str):
                a.find(None, "set_config('search_path', …) needs a constant value")
                return
            a.search_paths.append(parse_search_path(v))
        a.need("session")
