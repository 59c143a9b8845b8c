"""Strict masking: rewrite a statement so that everything it reads of strict-masked columns is masked.

Every reference to a relation with strict-masked columns in a FROM list (tables, views, partitions;
in joins, sub-selects, CTEs, LATERAL, UPDATE … FROM, DELETE … USING, MERGE … USING) becomes a
sub-select with the same columns in the same order, the masked ones computed at the source, under the
same correlation name: `FROM shop.customers c` → `FROM (SELECT id, <mask>(email) AS email, … FROM
shop.customers) AS c`. The rest of the statement is unchanged, so WHERE, JOIN, GROUP BY, functions
and casts see only masked values.

The target of INSERT/UPDATE/DELETE/MERGE stays the real table (writes must reach it). Its own strict
columns are read in place: every reference to one (in WHERE, SET values, RETURNING, ON CONFLICT, MERGE
conditions, and sub-selects inside them) is wrapped in the masking expression. A reference pgward
cannot resolve with certainty, or a whole-row reference to the target, is refused.

Works on pglast's AST (parse_sql) and deparses with pglast's RawStream: only statements that read a
strict relation pay for it, once per distinct text (the data plane caches the rewritten text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream

from control_plane.policy.functions import CATALOG_RELATIONS
from control_plane.policy.leaks import CATALOG_SCHEMAS, Leak, MaskIndex
from control_plane.policy.masking import StrictRelation

DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


class Unrewritable(Leak):
    """The statement reads strict-masked columns in a way the rewriter cannot make safe (42501)."""


@dataclass
class _Source:
    """A FROM item as column resolution sees it. `columns` None: not known."""

    refname: str
    columns: frozenset[str] | None
    # For `schema.rel.col` references: the schema of an unaliased relation, None when it is unqualified
    # (any schema of the path), "" when such references cannot name it (aliases, sub-selects).
    schema: str | None = ""
    target: bool = False  # the DML target itself


@dataclass
class _Target:
    rel: StrictRelation
    refnames: frozenset[str]
    schema: str | None
    relname: str


@dataclass
class _State:
    ctes: list[frozenset[str]] = field(default_factory=list)
    # (schema, relname) of unaliased relations replaced by sub-selects: `schema.rel.col` references
    # to them lose the schema (a sub-select answers to its alias only).
    unaliased: set[tuple[str, str]] = field(default_factory=set)
    # Names of unaliased relations left as they are: a shortened reference could come to mean one.
    kept_unaliased: set[str] = field(default_factory=set)
    changed: bool = False


class Rewriter:
    def __init__(
        self,
        strict: Mapping[tuple[str, str], StrictRelation],
        index: MaskIndex,
        search_path: Sequence[str],
    ) -> None:
        self.strict = strict
        self.index = index
        self.search_path = tuple(search_path)
        self.state = _State()

    # --- entry -------------------------------------------------------------------------------------

    def rewrite(self, sql: str) -> str | None:
        """The rewritten text, or None when the statement reads no strict relation."""
        try:
            stmts = parse_sql(sql)
        except ParseError as e:
            raise Unrewritable(f"pgward could not parse the statement for strict masking: {e}") from None
        for raw in stmts:
            raw.stmt = self.node(raw.stmt)
        if not self.state.changed:
            return None
        if self.state.unaliased:
            for raw in stmts:
                self._strip_qualifiers(raw.stmt)
        return ";\n".join(RawStream()(_any(raw.stmt)) for raw in stmts)

    # --- generic walk ------------------------------------------------------------------------------

    def node(self, node: Any) -> Any:
        """Walk any node; returns its replacement (the same object unless it is a rewritten FROM item)."""
        if isinstance(node, tuple | list):
            return tuple(self.node(n) for n in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.SelectStmt):
            self.select(node)
            return node
        if isinstance(node, DML):
            self.dml(node)
            return node
        self._children(node)
        return node

    def _children(self, node: Any, skip: tuple[str, ...] = ()) -> None:
        for name in node:
            if name in skip:
                continue
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple | list):
                setattr(node, name, self.node(value))

    def _with(self, clause: Any) -> int:
        """Walk a WITH clause, pushing its CTE names; returns how many scopes to pop."""
        if clause is None or not clause.ctes:
            return 0
        names = [c.ctename for c in clause.ctes]
        if clause.recursive:
            self.state.ctes.append(frozenset(names))
            for cte in clause.ctes:
                cte.ctequery = self.node(cte.ctequery)
            return 1
        # A CTE sees the CTEs before it, not itself or later ones.
        for i, cte in enumerate(clause.ctes):
            self.state.ctes.append(frozenset(names[:i]))
            cte.ctequery = self.node(cte.ctequery)
            self.state.ctes.pop()
        self.state.ctes.append(frozenset(names))
        return 1

    def _pop(self, n: int) -> None:
        for _ in range(n):
            self.state.ctes.pop()

    def select(self, node: Any) -> None:
        pushed = self._with(node.withClause)
        if node.fromClause:
            node.fromClause = tuple(self.from_item(i) for i in node.fromClause)
        self._children(node, skip=("withClause", "fromClause"))
        self._pop(pushed)

    def dml(self, node: Any) -> None:
        pushed = self._with(node.withClause)
        target = self._target(node.relation)
        if target is not None:
            _TargetReads(self, target).statement(node)
        for attr in ("fromClause", "usingClause"):
            items = getattr(node, attr, None)
            if items:
                setattr(node, attr, tuple(self.from_item(i) for i in items))
        if isinstance(node, ast.MergeStmt) and node.sourceRelation is not None:
            node.sourceRelation = self.from_item(node.sourceRelation)
        # The target relation itself is never replaced: writes must reach the real table.
        self._children(node, skip=("withClause", "relation", "fromClause", "usingClause", "sourceRelation"))
        self._pop(pushed)

    # --- FROM items --------------------------------------------------------------------------------

    def from_item(self, item: Any) -> Any:
        if isinstance(item, ast.RangeVar):
            rel = self._strict_for(item)
            if rel is None:
                if item.alias is None and item.relname:
                    self.state.kept_unaliased.add(item.relname)
                return item
            return self._replace(item, rel)
        if isinstance(item, ast.RangeTableSample) and isinstance(item.relation, ast.RangeVar):
            rel = self._strict_for(item.relation)
            item.args = self.node(item.args)
            item.repeatable = self.node(item.repeatable)
            return item if rel is None else self._replace(item.relation, rel, sample=item)
        if isinstance(item, ast.JoinExpr):
            item.larg = self.from_item(item.larg)
            item.rarg = self.from_item(item.rarg)
            item.quals = self.node(item.quals)
            return item
        return self.node(item)

    def _cte(self, name: str) -> bool:
        return any(name in scope for scope in self.state.ctes)

    def _candidates(self, rv: Any) -> list[tuple[str, str]] | None:
        """(schema, name) pairs a RangeVar may mean among the snapshot's relations; None: a CTE, a
        temporary or catalog relation (never strict)."""
        name = rv.relname
        if rv.schemaname is None:
            if self._cte(name) or rv.relpersistence == "t" or name in CATALOG_RELATIONS:
                return None
            return [(s, name) for s in self.search_path if (s, name) in self.index.relations]
        if rv.schemaname in CATALOG_SCHEMAS or rv.schemaname.startswith("pg_temp"):
            return None
        return [(rv.schemaname, name)]

    def _strict_for(self, rv: Any) -> StrictRelation | None:
        candidates = self._candidates(rv)
        if not candidates:
            return None
        found = [self.strict.get(c) for c in candidates]
        if all(f is None for f in found):
            return None
        first = found[0]
        same = all(
            f is not None and f.columns == first.columns and dict(f.masked) == dict(first.masked)  # type: ignore[union-attr]
            for f in found
        )
        if not same or first is None:
            options = ", ".join(f"{s}.{n}" for s, n in candidates)
            raise Unrewritable(
                f"relation {rv.relname} may mean {options}, which strict masking rewrites differently; "
                "qualify the name with its schema"
            )
        return first

    def _replace(self, rv: Any, rel: StrictRelation, sample: ast.RangeTableSample | None = None) -> Any:
        self.state.changed = True
        inner = ast.RangeVar(
            catalogname=rv.catalogname,
            schemaname=rv.schemaname,
            relname=rv.relname,
            inh=rv.inh,
            relpersistence=rv.relpersistence,
        )
        source: Any = inner
        if sample is not None:
            sample.relation = inner
            source = sample
        sub = _statement(f"SELECT {rel.select_list()} FROM pgward_placeholder")
        sub.fromClause = (source,)
        alias = rv.alias
        if alias is None:
            alias = ast.Alias(aliasname=rv.relname)
            if rv.schemaname is not None:
                self.state.unaliased.add((rv.schemaname, rv.relname))
            else:
                for schema in self.search_path:
                    self.state.unaliased.add((schema, rv.relname))
        return ast.RangeSubselect(lateral=False, subquery=sub, alias=alias)

    def _target(self, rv: Any) -> _Target | None:
        if not isinstance(rv, ast.RangeVar):
            return None
        rel = self._strict_for(rv)
        if rel is None:
            return None
        refnames: set[str] = {(rv.alias.aliasname if rv.alias else rv.relname) or ""}
        return _Target(rel, frozenset(refnames), None if rv.alias else rv.schemaname, rv.relname or "")

    # --- columns -----------------------------------------------------------------------------------

    def columns_of(self, rv: Any) -> frozenset[str] | None:
        candidates = self._candidates(rv)
        if candidates is None or not candidates:
            return None
        names: set[str] = set()
        for key in candidates:
            names.update(self.index.relations[key].columns)
        if rv.alias is not None and rv.alias.colnames:
            return None  # renamed columns: not worth modelling, so not known
        return frozenset(names)

    def _strip_qualifiers(self, node: Any) -> None:
        if isinstance(node, tuple | list):
            for n in node:
                self._strip_qualifiers(n)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.ColumnRef):
            fields = node.fields or ()
            names = [f.sval if isinstance(f, ast.String) else None for f in fields]
            if len(names) >= 3 and names[-3] is not None and names[-2] is not None:
                if (names[-3], names[-2]) in self.state.unaliased:
                    if names[-2] in self.state.kept_unaliased:
                        raise Unrewritable(
                            f"{names[-3]}.{names[-2]} and another relation named {names[-2]} are both "
                            "used without an alias; give them aliases"
                        )
                    node.fields = tuple(fields[-2:])
            return
        for name in node:
            self._strip_qualifiers(getattr(node, name))


class _TargetReads:
    """Wraps every read of a strict DML target's masked columns in the masking expression."""

    def __init__(self, rewriter: Rewriter, target: _Target) -> None:
        self.rw = rewriter
        self.target = target
        self.masked = frozenset(target.rel.masked)

    def statement(self, node: Any) -> None:
        level = [
            _Source(n, frozenset(self.target.rel.columns), self.target.schema, True)
            for n in self.target.refnames
        ]
        for attr in ("fromClause", "usingClause"):
            for item in getattr(node, attr, None) or ():
                level.extend(self._sources(item))
        if isinstance(node, ast.MergeStmt) and node.sourceRelation is not None:
            level.extend(self._sources(node.sourceRelation))
        if isinstance(node, ast.InsertStmt):
            # ON CONFLICT's `excluded` is the proposed row: the client's own values.
            level.append(_Source("excluded", frozenset(self.target.rel.columns)))
        levels = [level]
        returning = node.returningClause
        if isinstance(node, ast.UpdateStmt):
            for res in node.targetList or ():
                res.val = self.expr(res.val, levels)
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            node.whereClause = self.expr(node.whereClause, levels)
        if isinstance(node, ast.InsertStmt) and node.onConflictClause is not None:
            occ = node.onConflictClause
            for res in occ.targetList or ():
                res.val = self.expr(res.val, levels)
            occ.whereClause = self.expr(occ.whereClause, levels)
        if isinstance(node, ast.MergeStmt):
            node.joinCondition = self.expr(node.joinCondition, levels)
            for when in node.mergeWhenClauses or ():
                when.condition = self.expr(when.condition, levels)
                for res in when.targetList or ():
                    res.val = self.expr(res.val, levels)
                when.values = self.expr(when.values, levels)
        if returning is not None:
            # RETURNING old.x / new.x (PostgreSQL 18) are the target's rows too.
            aliases = {"old", "new"}
            for opt in returning.options or ():
                if opt.value:
                    aliases.add(opt.value)
            exprs = returning.exprs or ()
            ret_level = level + [_Source(a, frozenset(self.target.rel.columns), None, True) for a in aliases]
            for res in exprs:
                top = res.val if isinstance(res, ast.ResTarget) else None
                if isinstance(top, ast.ColumnRef) and top.fields and isinstance(top.fields[-1], ast.A_Star):
                    # `RETURNING *` / `c.*`: plain columns, masked by origin in the data plane.
                    continue
                if isinstance(res, ast.ResTarget):
                    before = res.val
                    res.val = self.expr(res.val, [ret_level])
                    if res.val is not before and res.name is None and isinstance(before, ast.ColumnRef):
                        last = before.fields[-1] if before.fields else None
                        if isinstance(last, ast.String):
                            res.name = last.sval

    def _sources(self, item: Any) -> list[_Source]:
        if isinstance(item, ast.RangeVar):
            name = (item.alias.aliasname if item.alias else item.relname) or ""
            if item.schemaname is None and self.rw._cte(item.relname or ""):
                return [_Source(name, None)]  # a CTE: its columns are not modelled here
            schema = "" if item.alias else item.schemaname
            return [_Source(name, self.rw.columns_of(item), schema)]
        if isinstance(item, ast.RangeTableSample):
            return self._sources(item.relation)
        if isinstance(item, ast.JoinExpr):
            inner = self._sources(item.larg) + self._sources(item.rarg)
            if item.alias is not None:
                cols: set[str] = set()
                for s in inner:
                    if s.columns is None:
                        return [_Source(item.alias.aliasname or "", None)]
                    cols |= s.columns
                return [_Source(item.alias.aliasname or "", frozenset(cols))]
            return inner
        if isinstance(item, ast.RangeSubselect):
            alias = (item.alias.aliasname if item.alias else "") or ""
            return [_Source(alias, _output_names(item.subquery, item.alias))]
        alias_node = getattr(item, "alias", None)
        return [_Source(alias_node.aliasname if alias_node else "", None)]

    # --- expressions -------------------------------------------------------------------------------

    def expr(self, node: Any, levels: list[list[_Source]]) -> Any:
        if isinstance(node, tuple | list):
            return tuple(self.expr(n, levels) for n in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.ColumnRef):
            return self.column(node, levels)
        if isinstance(node, ast.SelectStmt):
            self.select(node, levels)
            return node
        if isinstance(node, DML):
            # A data-modifying statement nested in an expression cannot name this target's columns
            # in a way pgward follows: refuse rather than guess.
            raise Unrewritable("a data-modifying statement inside a statement on a strict-masked table")
        for name in node:
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple | list):
                setattr(node, name, self.expr(value, levels))
        return node

    def select(self, node: Any, levels: list[list[_Source]]) -> None:
        ctes = node.withClause.ctes if node.withClause is not None else None
        if not ctes:
            self._select(node, levels)
            return
        # The CTE names shadow tables inside this query (pushed first: a name is treated as a CTE
        # wherever it might be one, which only makes resolution more cautious).
        self.rw.state.ctes.append(frozenset(c.ctename or "" for c in ctes))
        try:
            for cte in ctes:
                cte.ctequery = self.expr(cte.ctequery, levels)
            self._select(node, levels)
        finally:
            self.rw.state.ctes.pop()

    def _select(self, node: Any, levels: list[list[_Source]]) -> None:
        if node.larg is not None or node.rarg is not None:
            self.select(node.larg, levels)
            self.select(node.rarg, levels)
            for attr in ("sortClause", "limitOffset", "limitCount"):
                setattr(node, attr, self.expr(getattr(node, attr), levels))
            return
        level: list[_Source] = []
        for item in node.fromClause or ():
            self._from_reads(item, level, levels)
            level.extend(self._sources(item))
        inner = [level, *levels]
        for attr in (
            "targetList",
            "whereClause",
            "groupClause",
            "havingClause",
            "sortClause",
            "windowClause",
            "distinctClause",
            "valuesLists",
            "limitOffset",
            "limitCount",
        ):
            setattr(node, attr, self.expr(getattr(node, attr), inner))

    def _from_reads(self, item: Any, level: list[_Source], levels: list[list[_Source]]) -> None:
        """Expressions inside a FROM item of a nested select (sub-selects, function arguments)."""
        if isinstance(item, ast.RangeSubselect):
            visible = [level, *levels] if item.lateral else levels
            self.select(item.subquery, visible) if isinstance(item.subquery, ast.SelectStmt) else None
        elif isinstance(item, ast.JoinExpr):
            self._from_reads(item.larg, level, levels)
            self._from_reads(item.rarg, level, levels)
            own = self._sources(item.larg) + self._sources(item.rarg)
            item.quals = self.expr(item.quals, [own, *levels])
        elif isinstance(item, ast.RangeVar):
            return
        else:
            # Functions in FROM may refer to earlier items (implicitly LATERAL).
            for name in item:
                value = getattr(item, name)
                if isinstance(value, ast.Node | tuple | list) and name != "alias":
                    setattr(item, name, self.expr(value, [level, *levels]))

    def column(self, ref: Any, levels: list[list[_Source]]) -> Any:
        fields = ref.fields or ()
        names = [f.sval if isinstance(f, ast.String) else None for f in fields]
        if not names:
            return ref
        star = names[-1] is None
        qualifier = names[:-1]
        col = names[-1]
        if qualifier:
            refname = qualifier[-1]
            schema = qualifier[-2] if len(qualifier) >= 2 else None
            for level in levels:
                named = [s for s in level if s.refname == refname]
                hits = named
                if schema is not None:
                    hits = [s for s in named if s.target or s.schema == schema]
                    if not hits and any(s.schema is None for s in named):
                        # An unqualified relation of that name may or may not be in that schema.
                        if col in self.masked and refname == self.target.relname:
                            raise Unrewritable(
                                f"pgward cannot tell whether {schema}.{refname}.{col} refers to the "
                                f"strict-masked column of {self._label()}; use aliases"
                            )
                        return ref
                if hits:
                    if not any(s.target for s in hits):
                        return ref
                    if star:
                        raise Unrewritable(
                            f"{refname}.* reads every column of {self._label()}, whose strict-masked "
                            "columns pgward reads only one by one here; name the columns"
                        )
                    return self._wrap(ref, col) if col in self.masked else ref
            return ref
        if star or col is None:
            return ref
        for level in levels:
            known = [s for s in level if s.columns is not None and col in s.columns]
            if known:
                if any(s.target for s in known):
                    return self._wrap(ref, col) if col in self.masked else ref
                return ref
            if any(s.columns is None for s in level):
                if col in self.masked:
                    raise Unrewritable(
                        f"pgward cannot tell whether {col} refers to the strict-masked column of "
                        f"{self._label()}; qualify it with a table name or alias"
                    )
                return ref
            whole = [s for s in level if s.refname == col]
            if whole:
                if any(s.target for s in whole):
                    raise Unrewritable(
                        f"a whole-row reference to {self._label()} would read its strict-masked columns "
                        "in clear; name the columns"
                    )
                return ref
        return ref

    def _label(self) -> str:
        return f"{self.target.rel.schema}.{self.target.rel.name}"

    def _wrap(self, ref: Any, column: str) -> Any:
        self.rw.state.changed = True
        text = self.target.rel.expression(column, RawStream()(ref))
        return _statement(f"SELECT {text}").targetList[0].val


def _any(node: Any) -> Any:
    return node


def _statement(sql: str) -> Any:
    """The one statement of `sql`, parsed (templates pgward builds itself)."""
    return parse_sql(sql)[0].stmt


def _output_names(query: Any, alias: Any) -> frozenset[str] | None:
    if alias is not None and alias.colnames:
        names = {c.sval or "" for c in alias.colnames if isinstance(c, ast.String)}
        # Columns past the alias list keep their names; known only when the query's are.
        rest = _output_names(query, None)
        return None if rest is None else frozenset(names | rest)
    if not isinstance(query, ast.SelectStmt):
        return None
    if query.larg is not None:
        return _output_names(query.larg, None)
    out: set[str] = set()
    for res in query.targetList or ():
        if not isinstance(res, ast.ResTarget):
            return None
        if res.name:
            out.add(res.name)
            continue
        val = res.val
        if isinstance(val, ast.ColumnRef) and val.fields:
            last = val.fields[-1]
            if not isinstance(last, ast.String):
                return None  # `*`
            out.add(last.sval or "")
            continue
        return None
    return frozenset(out)


def rewrite_strict(
    sql: str,
    strict: Mapping[tuple[str, str], StrictRelation],
    index: MaskIndex,
    search_path: Sequence[str],
) -> str | None:
    """The statement rewritten for strict masking; None when it reads no strict-masked relation.
    Raises Unrewritable (a Leak: refused with 42501) when it cannot be made safe."""
    try:
        return Rewriter(strict, index, search_path).rewrite(sql)
    except Leak:
        raise
    except Exception as e:  # fail closed: a shape the rewriter does not handle
        raise Unrewritable(
            f"pgward could not rewrite the statement for strict masking ({type(e).__name__}), "
            "so it is refused"
        ) from e
