"""Leak analysis for masked sessions: which output columns carry masked data without a table origin."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.policy.copy import CopyOptions, CopyRefused, CopyShape
from control_plane.policy.functions import CATALOG_RELATIONS

CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# Catalog views that hold sampled column values (most common values, histogram bounds): reading them
# would show masked values in clear.
STATISTICS_RELATIONS = frozenset(
    {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"}
)
# Functions that cannot fail with an error naming their argument's value, so a masked column may be
# passed to them outside the select list (WHERE, JOIN, GROUP BY, ORDER BY, HAVING). Anything else
# (casts included) could raise `invalid input syntax for type integer: "<the clear value>"`.
ERROR_SAFE_FUNCTIONS = frozenset(
    """
    lower upper initcap length char_length character_length octet_length bit_length md5 sha224 sha256
    sha384 sha512 btrim ltrim rtrim trim substr substring left right strpos position starts_with
    concat concat_ws replace reverse lpad rpad repeat translate split_part quote_literal quote_ident
    quote_nullable coalesce nullif greatest least count min max string_agg array_agg bool_and bool_or
    every regexp_like regexp_count textlike textnlike texticlike texticnlike hashtext
    """.split()
)
# Statement kinds that run code pgward does not analyse, which could show masked values in a NOTICE or
# an error message (DO blocks, procedures, new functions and triggers, rules).
CODE_STATEMENTS = {
    "DoStmt": "DO blocks",
    "CallStmt": "CALL of procedures",
    "CreateFunctionStmt": "CREATE FUNCTION or PROCEDURE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "RuleStmt": "CREATE RULE",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
}
# DDL that evaluates expressions over existing rows or converts their values (errors echo values).
ROW_EVALUATING_DDL = frozenset({"AlterTableStmt", "IndexStmt", "CreateStatsStmt", "CreatePolicyStmt"})


class Leak(Exception):
    """The statement could show masked data in clear; `message` says how (SQLSTATE 42501)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Col:
    """What one column or expression carries.

    `taint`: masked columns (schema.table.column) whose values flow into it. `origin`: PostgreSQL
    reports a table column as its origin in RowDescription, so the data plane masks it by origin.
    `how`: why the origin was lost, for messages."""

    taint: frozenset[str] = frozenset()
    origin: bool = True
    how: str = ""

    def derived(self, how: str) -> Col:
        return Col(self.taint, False, self.how or how)


CLEAN = Col()


def combine(cols: Iterable[Col], how: str) -> Col:
    """An expression over several values: their taints, no origin."""
    taint: set[str] = set()
    first_how = ""
    for c in cols:
        taint |= c.taint
        if c.taint and not c.origin and not first_how:
            first_how = c.how
    return Col(frozenset(taint), False, first_how or how)


@dataclass(frozen=True)
class Relation:
    """A relation of the target as the analysis sees it: every column, and the tainted ones."""

    schema: str
    name: str
    columns: tuple[str, ...]
    tainted: Mapping[str, Col] = field(default_factory=dict)
    refused: str | None = None  # why any statement reading it is refused (a view pgward cannot mask)
    # Columns masked strictly: reads of them are rewritten to masked values at the source.
    strict: frozenset[str] = frozenset()
    generated: frozenset[str] = frozenset()  # generated columns: COPY … TO leaves them out

    def col(self, name: str, strict_clean: bool = False) -> Col | None:
        if name in self.tainted:
            if strict_clean and name in self.strict:
                # The rewritten statement reads the masked value: nothing clear flows from it.
                return CLEAN
            return self.tainted[name]
        return CLEAN if name in self.columns else None

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class MaskIndex:
    """The relations of one catalog snapshot, with what a session's masks make of their columns."""

    relations: Mapping[tuple[str, str], Relation]

    @property
    def masked(self) -> bool:
        return any(r.tainted for r in self.relations.values())

    def lookup(
        self,
        schema: str | None,
        name: str,
        search_path: tuple[str, ...],
        created: frozenset[tuple[str | None, str]] = frozenset(),
    ) -> Relation | None:
        """The relation a name means; None for catalog and temporary relations (never masked).

        An unqualified name is looked up in every schema of the path: the union is used, so a name
        that may resolve to a masked relation is treated as masked. A relation the snapshot does not
        know (created after it) is refused: its columns could be masked."""
        if schema is not None:
            if schema in CATALOG_SCHEMAS or schema == "pg_temp" or schema.startswith("pg_temp_"):
                self._statistics(schema, name)
                return None
            rel = self.relations.get((schema, name))
            if rel is None:
                if (schema, name) in created:
                    return None  # created by this session, from data that passed this analysis
                raise Leak(_unknown(f"{schema}.{name}"))
            if rel.refused:
                raise Leak(rel.refused)
            return rel
        if name in CATALOG_RELATIONS:
            self._statistics("pg_catalog", name)
            return None
        found = [self.relations[(s, name)] for s in search_path if (s, name) in self.relations]
        if not found:
            if any((s, name) in created for s in (None, "pg_temp", *search_path)):
                return None
            raise Leak(_unknown(name))
        for rel in found:
            if rel.refused:
                raise Leak(rel.refused)
        if len(found) == 1:
            return found[0]
        columns: list[str] = []
        tainted: dict[str, Col] = {}
        # Strict only where every relation the name may mean masks the column strictly.
        strict = frozenset.intersection(
            *(r.strict | (frozenset(r.columns) - frozenset(r.tainted)) for r in found)
        )
        for rel in found:
            for c in rel.columns:
                if c not in columns:
                    columns.append(c)
            for c, col in rel.tainted.items():
                prev = tainted.get(c, CLEAN)
                tainted[c] = Col(prev.taint | col.taint, prev.origin and col.origin, prev.how or col.how)
        return Relation(found[0].schema, name, tuple(columns), tainted, strict=strict & frozenset(tainted))

    @staticmethod
    def _statistics(schema: str, name: str) -> None:
        if schema == "pg_catalog" and name in STATISTICS_RELATIONS:
            raise Leak(f"pg_catalog.{name} holds sampled column values, and this session has masked columns")


def _unknown(name: str) -> str:
    return (
        f"relation {name} is not in pgward's catalog snapshot for this session (created or renamed "
        "since it started?), so pgward cannot tell whether it holds masked columns; reconnect to "
        "refresh the snapshot"
    )


def _names(items: list[Any] | None) -> list[str | None]:
    """Field names of a ColumnRef; None for `*`."""
    out: list[str | None] = []
    for i in items or ():
        if isinstance(i, dict) and "String" in i:
            out.append(i["String"]["sval"])
        elif isinstance(i, dict) and "A_Star" in i:
            out.append(None)
    return out


def _func_name(call: dict[str, Any]) -> str:
    names = [i["String"]["sval"] for i in call.get("funcname") or () if "String" in i]
    return names[-1] if names else ""


@dataclass
class Source:
    """One FROM item: the names it answers to and its columns (None: not known, use `default`)."""

    alias: str
    relname: str | None
    schema: str | None
    columns: dict[str, Col] | None
    default: Col = CLEAN
    qualified_only: bool = False  # RETURNING's old/new: only `old.x` reaches them, never a bare `x`
    # `*` over it gives exactly `columns`, in order (a relation of the catalog): COPY plans need
    # positions, and other sources' columns are tracked by name only.
    exact: bool = False

    def whole(self) -> Col:
        if self.columns is None:
            return self.default.derived("a whole-row value")
        return combine(self.columns.values(), "a whole-row value")


@dataclass
class Scope:
    sources: list[Source]
    parent: Scope | None
    ctes: dict[str, list[tuple[str, Col]] | None]
    coalesced: set[str] = field(default_factory=set)  # FULL JOIN USING columns: COALESCE, no origin
    natural_full: bool = False
    merged: bool = False  # a USING or NATURAL join: `*` puts the merged columns first, once

    def cte(self, name: str) -> tuple[bool, list[tuple[str, Col]] | None]:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True, scope.ctes[name]
            scope = scope.parent
        return False, None


class Analyzer:
    """Walks one statement's JSON parse tree; raises Leak when masked data could leave in clear."""

    def __init__(
        self,
        index: MaskIndex,
        search_path: tuple[str, ...],
        created: frozenset[tuple[str | None, str]] = frozenset(),
        strict_clean: bool = False,
    ) -> None:
        self.index = index
        self.search_path = search_path
        self.created = created
        # The statement is rewritten for strict masking: reads of strict columns yield masked values
        # (except a DML target's own columns, which stay the real table's and keep their taint).
        self.strict_clean = strict_clean
        self.touched = False  # a relation with masked columns was read: the decision depends on names
        self.copies: list[CopyShape] = []  # COPY … TO STDOUT statements, in order
        # Why the top-level output columns' positions are not known exactly (for COPY plans).
        self.inexact: str | None = None

    # --- statements --------------------------------------------------------------------------------

    def statement(self, node: dict[str, Any] | None) -> None:
        if not node:
            return
        ((kind, body),) = node.items()
        if kind in CODE_STATEMENTS:
            raise Leak(
                f"{CODE_STATEMENTS[kind]} could show masked values in messages, and this session "
                "has masked columns"
            )
        if kind == "SelectStmt":
            outputs = self.select(body, None)
            into = body.get("intoClause")
            self.check_outputs(outputs, "the select list", copy="SELECT … INTO" if into else None)
        elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            self.check_outputs(self.dml(kind, body, None), "RETURNING")
        elif kind == "DeclareCursorStmt":
            self.statement(body.get("query"))
        elif kind == "ExplainStmt":
            # Decided as if the statement ran: EXPLAIN ANALYZE runs it, and a plain EXPLAIN's output
            # is not worth a weaker rule.
            self.statement(body.get("query"))
        elif kind == "PrepareStmt":
            self.statement(body.get("query"))
        elif kind == "CreateTableAsStmt":
            what = (
                "CREATE MATERIALIZED VIEW" if body.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"
            )
            self.check_outputs(self.query(body.get("query") or {}, None), "", copy=what)
        elif kind == "ViewStmt":
            self.check_outputs(self.query(body.get("query") or {}, None), "", copy="CREATE VIEW")
        elif kind == "CopyStmt":
            self.copy(body)
        elif kind in ROW_EVALUATING_DDL:
            rel = body.get("relation")
            if isinstance(rel, dict) and "relname" in rel:
                found = self._relation(rel)
                if found is not None and found.tainted:
                    raise Leak(
                        f"{kind.removesuffix('Stmt')} on {found.label} evaluates its masked columns "
                        "on the server (errors could show their values); run it from an exempt session"
                    )
            self.generic(body, _empty_scope())
        else:
            # Utility statements: only expressions inside them (DEFAULTs, sub-selects) can read data.
            self.generic(body, _empty_scope())

    def copy(self, body: dict[str, Any]) -> None:
        if body.get("is_from"):
            if body.get("whereClause"):
                self.expr(body["whereClause"], _empty_scope())
            return
        if body.get("is_program") or body.get("filename") is not None:
            # The server writes the file itself: nothing passes the gateway to be masked.
            raise Leak(
                "COPY … TO a server file or PROGRAM is not available in a session with masked columns "
                "(pgward masks what it relays); use COPY … TO STDOUT"
            )
        try:
            options = CopyOptions.parse(body.get("options"))
        except CopyRefused as e:
            raise Leak(e.message) from e
        rel = body.get("relation")
        columns: tuple[Col, ...] | None
        if rel:
            columns = self._copy_relation(rel, body.get("attlist"))
        else:
            self.inexact = None
            outputs = self.query(body.get("query") or {}, None)
            self.check_outputs(outputs, "the select list of COPY")
            columns = tuple(c for _, c in outputs)
            if self.inexact is not None:
                tainted = [c for c in columns if c.taint]
                if tainted:
                    raise Leak(
                        f"column {sorted(tainted[0].taint)[0]} is masked for you, and pgward cannot tell its "
                        f"position in this COPY's output ({self.inexact}); list the columns explicitly, "
                        "as in COPY (SELECT id, email FROM …) TO STDOUT"
                    )
                columns = None
        self.copies.append(CopyShape(columns, options))

    def _copy_relation(self, rel: dict[str, Any], attlist: list[Any] | None) -> tuple[Col, ...] | None:
        """The output columns of `COPY table [(columns)] TO`: the listed ones, or every column that is
        not generated, in attribute order."""
        found = self._relation(rel)
        if found is None:
            return None  # catalog and temporary relations: never masked
        schema = rel.get("schemaname")
        if schema is None and found.tainted:
            name = rel.get("relname", "")
            if sum((s, name) in self.index.relations for s in self.search_path) > 1:
                raise Leak(
                    f"relation {name} has masked columns in one of several schemas of your search_path; "
                    "qualify its name with its schema in COPY"
                )
        listed = [n for n in _names(attlist) if n is not None]
        names = listed or [c for c in found.columns if c not in found.generated]
        return tuple(found.col(n) or CLEAN for n in names)

    def check_outputs(self, outputs: list[tuple[str, Col]], where: str, copy: str | None = None) -> None:
        for _name, col in outputs:
            if not col.taint:
                continue
            label = sorted(col.taint)[0]
            if copy is not None:
                raise Leak(
                    f"column {label} is masked for you and cannot be copied into another object with {copy}"
                )
            if not col.origin:
                raise Leak(f"column {label} is masked for you and cannot be used in {col.how} in {where}")

    # --- queries -----------------------------------------------------------------------------------

    def query(self, node: dict[str, Any], parent: Scope | None) -> list[tuple[str, Col]]:
        """Output columns of a query node (SelectStmt or a DML statement with RETURNING)."""
        if not node:
            return []
        ((kind, body),) = node.items()
        if kind == "SelectStmt":
            return self.select(body, parent)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self.dml(kind, body, parent)
        self.generic(body, parent or _empty_scope())
        return []

    def _with(self, body: dict[str, Any], parent: Scope | None) -> Scope:
        scope = Scope([], parent, {})
        with_clause = body.get("withClause")
        if not with_clause:
            return scope
        recursive = bool(with_clause.get("recursive"))
        items: list[tuple[str, list[str], dict[str, Any]]] = []
        for item in with_clause.get("ctes") or ():
            cte = item.get("CommonTableExpr", {})
            aliases = [n for n in _names(cte.get("aliascolnames")) if n is not None]
            items.append((cte.get("ctename", ""), aliases, cte.get("ctequery") or {}))
        if not recursive:
            # Each CTE sees the ones before it only.
            for name, aliases, query in items:
                scope.ctes[name] = _rename(self.query(query, scope), aliases)
            return scope
        # WITH RECURSIVE: every CTE of the list sees every other (forward references too) and itself.
        # Iterate until their columns stop changing (taints only grow, origins only go).
        for name, _aliases, _query in items:
            scope.ctes[name] = None
        finals: dict[str, list[tuple[str, Col]]] = {}
        for _ in range(len(items) + 6):
            changed = False
            for name, aliases, query in items:
                outputs = _rename(self.query(query, scope), aliases)
                finals[name] = outputs
                seen = [(n, c.derived("a recursive query") if c.taint else c) for n, c in outputs]
                if scope.ctes[name] != seen:
                    scope.ctes[name] = seen
                    changed = True
            if not changed:
                break
        else:
            raise Leak("pgward could not follow the columns of this WITH RECURSIVE query; simplify it")
        scope.ctes.update(finals)
        return scope

    def select(self, body: dict[str, Any], parent: Scope | None) -> list[tuple[str, Col]]:
        scope = self._with(body, parent)
        if body.get("op", "SETOP_NONE") != "SETOP_NONE":
            left = self.select(body.get("larg") or {}, scope)
            right = self.select(body.get("rarg") or {}, scope)
            merged = [
                (name, combine([lc, rc], "a set operation (UNION, INTERSECT, EXCEPT)"))
                for (name, lc), (_, rc) in zip(left, right, strict=False)
            ]
            out_scope = Scope([Source("", None, None, dict(merged))], scope, {})
            for key in ("sortClause", "limitOffset", "limitCount"):
                self.expr(body.get(key), out_scope)
            return merged
        for item in body.get("fromClause") or ():
            self.from_item(item, scope)
        if body.get("valuesLists"):
            rows = [
                [self.expr(v, scope) for v in (row.get("List", {}).get("items") or ())]
                for row in body["valuesLists"]
            ]
            width = max((len(r) for r in rows), default=0)
            return [
                (f"column{i + 1}", combine([r[i] for r in rows if i < len(r)], "VALUES"))
                for i in range(width)
            ]
        outputs: list[tuple[str, Col]] = []
        for target in body.get("targetList") or ():
            res = target.get("ResTarget", {})
            outputs.extend(self.target(res, scope))
        for key in (
            "whereClause",
            "groupClause",
            "havingClause",
            "sortClause",
            "windowClause",
            "distinctClause",
            "limitOffset",
            "limitCount",
        ):
            self.expr(body.get(key), scope, outputs=outputs)
        return outputs

    def target(self, res: dict[str, Any], scope: Scope) -> list[tuple[str, Col]]:
        val = res.get("val") or {}
        name = res.get("name")
        if "ColumnRef" in val:
            fields = _names(val["ColumnRef"].get("fields"))
            if fields and fields[-1] is None:
                # `*` / `t.*` at the top of a target: PostgreSQL expands it into plain columns.
                return self.expand(fields[:-1], scope)
            col = self.column(fields, scope)
            return [(name or (fields[-1] or "?"), col)]
        col = self.expr(val, scope).derived("an expression")
        return [(name or "?column?", col)]

    def expand(self, qualifier: list[str | None], scope: Scope) -> list[tuple[str, Col]]:
        if qualifier:
            sources = [s for s in scope.sources if _named(s, qualifier)]
        else:
            sources = [s for s in scope.sources if not s.qualified_only]
        if qualifier and not sources:
            found = self._find_source(qualifier, scope.parent)
            sources = [found] if found else []
        if scope.parent is None and self.inexact is None:
            # The top level of a statement: COPY plans need each output column's position.
            if scope.merged:
                self.inexact = "* over a USING or NATURAL join"
            elif not all(s.exact for s in sources):
                self.inexact = "* over something other than a table"
        out: list[tuple[str, Col]] = []
        for src in sources:
            if src.columns is None:
                out.append(("?", src.default.derived("a function result")))
            else:
                out.extend(src.columns.items())
        return out

    def dml(self, kind: str, body: dict[str, Any], parent: Scope | None) -> list[tuple[str, Col]]:
        scope = self._with(body, parent)
        rel = body.get("relation") or {}
        target = self._source_for(rel, scope, target=True)
        schema = rel.get("schemaname")
        label = f"{schema}.{rel.get('relname', '')}" if schema else str(rel.get("relname", ""))
        if kind == "InsertStmt":
            select = body.get("selectStmt")
            if select:
                for _name, col in self.query(select, scope):
                    if col.taint:
                        raise Leak(
                            f"column {sorted(col.taint)[0]} is masked for you and cannot be copied into "
                            f"{label} with INSERT"
                        )
            scope.sources.append(target)
            conflict = body.get("onConflictClause") or {}
            self._assignments(conflict.get("targetList"), scope, label)
            self.expr(conflict.get("whereClause"), scope)
            self.expr(conflict.get("infer"), scope)
        elif kind == "MergeStmt":
            scope.sources.append(target)
            self.from_item(body.get("sourceRelation") or {}, scope)
            self.expr(body.get("joinCondition"), scope)
            for clause in body.get("mergeWhenClauses") or ():
                when = clause.get("MergeWhenClause", {})
                self.expr(when.get("condition"), scope)
                self._assignments(when.get("targetList"), scope, label)
                for value in when.get("values") or ():
                    if self.expr(value, scope).taint:
                        raise Leak(f"masked data cannot be copied into {label} with MERGE")
        else:
            scope.sources.append(target)
            for item in body.get("fromClause") or body.get("usingClause") or ():
                self.from_item(item, scope)
            if kind == "UpdateStmt":
                self._assignments(body.get("targetList"), scope, label)
            self.expr(body.get("whereClause"), scope)
        clause = body.get("returningClause") or {}
        returning = clause.get("exprs") or body.get("returningList") or ()
        if returning and target.columns is not None:
            # RETURNING old.x / new.x (PostgreSQL 18, renamable with WITH (OLD AS o, NEW AS n)): not
            # known to keep the table as origin, so treated as computed values.
            names = {"old", "new"}
            for option in clause.get("options") or ():
                alias = option.get("ReturningOption", {}).get("value")
                if alias:
                    names.add(alias)
            derived = {n: c.derived("an old/new value") if c.taint else c for n, c in target.columns.items()}
            for alias in names:
                scope.sources.append(Source(alias, None, None, derived, qualified_only=True))
        outputs: list[tuple[str, Col]] = []
        for item in returning:
            outputs.extend(self.target(item.get("ResTarget", {}), scope))
        return outputs

    def _assignments(self, targets: list[Any] | None, scope: Scope, label: str) -> None:
        for item in targets or ():
            res = item.get("ResTarget", {})
            col = self.expr(res.get("val"), scope)
            if col.taint:
                raise Leak(
                    f"column {sorted(col.taint)[0]} is masked for you and cannot be copied into {label} "
                    "with UPDATE, MERGE or ON CONFLICT"
                )

    # --- FROM --------------------------------------------------------------------------------------

    def from_item(self, node: dict[str, Any], scope: Scope) -> None:
        if not node:
            return
        ((kind, body),) = node.items()
        if kind == "RangeVar":
            scope.sources.append(self._source_for(body, scope))
        elif kind == "RangeSubselect":
            outputs = self.query(body.get("subquery") or {}, scope)
            alias = body.get("alias") or {}
            outputs = _rename(outputs, [n for n in _names(alias.get("colnames")) if n is not None])
            scope.sources.append(Source(alias.get("aliasname", ""), None, None, dict(outputs)))
        elif kind == "JoinExpr":
            before = len(scope.sources)
            self.from_item(body.get("larg") or {}, scope)
            self.from_item(body.get("rarg") or {}, scope)
            if body.get("usingClause") or body.get("isNatural"):
                scope.merged = True
            if body.get("jointype") == "JOIN_FULL":
                if body.get("isNatural"):
                    scope.natural_full = True
                for name in _names(body.get("usingClause")):
                    if name is not None:
                        scope.coalesced.add(name)
            self.expr(body.get("quals"), scope)
            alias = body.get("alias")
            if alias:
                columns: dict[str, Col] | None = {}
                for src in scope.sources[before:]:
                    if src.columns is None or columns is None:
                        columns = None
                        break
                    for n, c in src.columns.items():
                        columns[n] = _merge(columns.get(n), c)
                default = combine((s.default for s in scope.sources[before:]), "a function result")
                scope.sources.append(Source(alias.get("aliasname", ""), None, None, columns, default))
        elif kind == "RangeTableSample":
            self.from_item(body.get("relation") or {}, scope)
            self.expr(body.get("args"), scope)
        else:
            # Functions in FROM (unnest, generate_series, ROWS FROM, XMLTABLE, JSON_TABLE): their columns
            # carry whatever their arguments carry, with no table origin.
            taint = self.expr(body, scope)
            alias = body.get("alias") or {}
            scope.sources.append(
                Source(alias.get("aliasname", ""), None, None, None, taint.derived("a function in FROM"))
            )

    def _source_for(self, rel: dict[str, Any], scope: Scope, target: bool = False) -> Source:
        schema = rel.get("schemaname")
        name = rel.get("relname", "")
        alias = (rel.get("alias") or {}).get("aliasname") or name
        colnames = [n for n in _names((rel.get("alias") or {}).get("colnames")) if n is not None]
        if schema is None:
            is_cte, outputs = scope.cte(name)
            if is_cte:
                if outputs is None:
                    # A recursive self-reference on the first pass: nothing known yet.
                    return Source(alias, name, None, {}, CLEAN)
                return Source(alias, name, None, dict(_rename(outputs, colnames)))
        found = self._relation(rel)
        if found is None:
            return Source(alias, name, schema, None, CLEAN)
        clean = self.strict_clean and not target
        columns = dict(_rename([(c, found.col(c, clean) or CLEAN) for c in found.columns], colnames))
        return Source(alias, name, schema, columns, exact=len(columns) == len(found.columns))

    def _relation(self, rel: dict[str, Any]) -> Relation | None:
        schema = rel.get("schemaname")
        if rel.get("relpersistence") == "t" and schema is None:
            schema = "pg_temp"
        found = self.index.lookup(schema, rel.get("relname", ""), self.search_path, self.created)
        if found is not None and found.tainted:
            self.touched = True
        return found

    # --- expressions -------------------------------------------------------------------------------

    def column(self, fields: list[str | None], scope: Scope) -> Col:
        if not fields:
            return CLEAN
        if fields[-1] is None:
            qualifier = fields[:-1]
            if not qualifier:
                return combine(
                    (s.whole() for s in scope.sources if not s.qualified_only), "a whole-row value"
                )
            src = self._find_source(qualifier, scope)
            return src.whole() if src else CLEAN
        name = fields[-1]
        if len(fields) == 1:
            level: Scope | None = scope
            while level is not None:
                hits = [
                    s.columns[name]
                    for s in level.sources
                    if s.columns is not None and name in s.columns and not s.qualified_only
                ]
                if hits:
                    col = hits[0] if len(hits) == 1 else combine(hits, "a merged join column")
                    if (name in level.coalesced or level.natural_full) and col.taint:
                        col = col.derived("a FULL JOIN USING column")
                    return col
                whole = [s for s in level.sources if s.alias == name]
                if whole:
                    return whole[0].whole()
                unknown = [s for s in level.sources if s.columns is None and not s.qualified_only]
                if unknown:
                    return combine((s.default for s in unknown), "a function result")
                level = level.parent
            return CLEAN
        src = self._find_source(fields[:-1], scope)
        if src is None:
            return CLEAN
        if src.columns is None:
            return src.default
        return src.columns.get(name, CLEAN)

    def _find_source(self, qualifier: list[str | None], scope: Scope | None) -> Source | None:
        level = scope
        while level is not None:
            for src in level.sources:
                if _named(src, qualifier):
                    return src
            level = level.parent
        return None

    def expr(self, node: Any, scope: Scope, outputs: list[tuple[str, Col]] | None = None) -> Col:
        """What an expression carries; raises Leak where a masked value could reach an error message."""
        if isinstance(node, list):
            return combine((self.expr(n, scope, outputs) for n in node), "an expression")
        if not isinstance(node, dict):
            return CLEAN
        if len(node) != 1 or not next(iter(node))[:1].isupper():
            # A node's fields (or a one-field body such as RangeFunction's {"functions": …}).
            return combine((self.expr(v, scope, outputs) for v in node.values()), "an expression")
        ((kind, body),) = node.items()
        if not isinstance(body, dict):
            return CLEAN
        if kind == "ColumnRef":
            fields = _names(body.get("fields"))
            if outputs is not None and len(fields) == 1 and fields[0] is not None:
                # ORDER BY / GROUP BY may name an output column.
                named = [c for n, c in outputs if n == fields[0]]
                if named and not any(s.columns is not None and fields[0] in s.columns for s in scope.sources):
                    return named[0]
            return self.column(fields, scope)
        if kind == "SubLink":
            inner = self.query(body.get("subselect") or {}, scope)
            test = self.expr(body.get("testexpr"), scope)
            return combine([test, *(c for _, c in inner)], "a sub-select")
        if kind in ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return combine((c for _, c in self.query(node, scope)), "a sub-select")
        if kind == "TypeCast":
            arg = self.expr(body.get("arg"), scope, outputs)
            if arg.taint:
                raise Leak(
                    f"column {sorted(arg.taint)[0]} is masked for you and cannot be cast: "
                    "an error message could show its value"
                )
            return arg.derived("a cast")
        if kind == "FuncCall":
            name = _func_name(body)
            args = [self.expr(a, scope, outputs) for a in body.get("args") or ()]
            rest = [
                self.expr(body.get(k), scope, outputs)
                for k in ("agg_order", "agg_filter", "over")
                if body.get(k)
            ]
            col = combine([*args, *rest], f"{name}()")
            if any(a.taint for a in args) and name not in ERROR_SAFE_FUNCTIONS:
                label = sorted(col.taint)[0]
                raise Leak(
                    f"column {label} is masked for you and cannot be passed to {name}(): "
                    "pgward cannot tell what the function shows of it (in its result or an error)"
                )
            return col
        if kind in ("A_Const", "ParamRef", "SQLValueFunction"):
            return CLEAN
        if kind == "RowExpr":
            return combine((self.expr(a, scope, outputs) for a in body.get("args") or ()), "a ROW() value")
        if kind == "A_Indirection":
            return combine(
                [self.expr(body.get("arg"), scope, outputs), self.expr(body.get("indirection"), scope)],
                "a field or subscript of a value",
            )
        if kind == "SortBy":
            return self.expr(body.get("node"), scope, outputs)
        return combine(
            (self.expr(v, scope, outputs) for v in body.values() if isinstance(v, dict | list)),
            "an expression",
        )

    def generic(self, body: Any, scope: Scope) -> None:
        """Sub-selects and expressions inside a utility statement."""
        self.expr(body, scope)


def _empty_scope() -> Scope:
    return Scope([], None, {})


def _named(src: Source, qualifier: list[str | None]) -> bool:
    names = [q for q in qualifier if q is not None]
    if not names:
        return False
    if len(names) == 1:
        return src.alias == names[0]
    return src.relname == names[-1] and src.schema == names[-2] and src.alias == src.relname


def _rename(outputs: list[tuple[str, Col]], aliases: list[str]) -> list[tuple[str, Col]]:
    if not aliases:
        return outputs
    return [(aliases[i] if i < len(aliases) else n, c) for i, (n, c) in enumerate(outputs)]


def _merge(a: Col | None, b: Col) -> Col:
    if a is None:
        return b
    return Col(a.taint | b.taint, a.origin and b.origin, a.how or b.how)


def check_statement(
    node: dict[str, Any] | None,
    index: MaskIndex,
    search_path: tuple[str, ...],
    created: frozenset[tuple[str | None, str]] = frozenset(),
    strict_clean: bool = False,
    copies: list[CopyShape] | None = None,
) -> bool:
    """Raise Leak if the statement could show masked data in clear; True when it read a masked
    relation (its decision then depends on column aliases, which fingerprints ignore).

    `created`: relations this session created after its catalog snapshot (schema None: unqualified).
    `strict_clean`: the statement will run rewritten for strict masking.
    `copies`: receives the shape of a COPY … TO STDOUT statement (the data plane masks its output)."""
    analyzer = Analyzer(index, search_path, created, strict_clean)
    analyzer.statement(node)
    if copies is not None:
        copies.extend(analyzer.copies)
    return analyzer.touched


def created_relation(node: dict[str, Any] | None) -> tuple[str | None, str] | None:
    """The relation a statement creates (CREATE TABLE/VIEW, CREATE TABLE AS, SELECT INTO)."""
    if not node:
        return None
    ((kind, body),) = node.items()
    rel: Any = None
    if kind in ("CreateStmt", "CreateForeignTableStmt"):
        rel = body.get("relation") if kind == "CreateStmt" else body.get("base", {}).get("relation")
    elif kind == "ViewStmt":
        rel = body.get("view")
    elif kind == "CreateTableAsStmt":
        rel = (body.get("into") or {}).get("rel")
    elif kind == "SelectStmt" and body.get("intoClause"):
        rel = body["intoClause"].get("rel")
    if not isinstance(rel, dict) or "relname" not in rel:
        return None
    schema = rel.get("schemaname")
    if schema is None and rel.get("relpersistence") == "t":
        schema = "pg_temp"
    return (schema, rel["relname"])


def view_outputs(
    node: dict[str, Any], index: MaskIndex, search_path: tuple[str, ...] = ()
) -> list[tuple[str, Col]]:
    """Output columns of a view's query (for propagating masks to views)."""
    return Analyzer(index, search_path).query(node, None)
