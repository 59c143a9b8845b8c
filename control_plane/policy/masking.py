"""Masking: rules of a session, their resolution to (table OID, attnum) on the target, the catalog cache."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from control_plane.connections.service import ConnectionTarget
from control_plane.policy.classify import Unparsable, parse
from control_plane.policy.copy import CopyShape
from control_plane.policy.documents import (
    DETECTOR_KINDS,
    MASK_FUNCTIONS,
    PolicyDocument,
    split_column_pattern,
)
from control_plane.policy.leaks import Col, Leak, MaskIndex, Relation, view_outputs

log = structlog.get_logger("pgward.masking")

MASK_KEY_INFO = b"pgward mask hash"
CATALOG_TTL = 60.0
# Relation kinds whose rows a SELECT can return: tables, partitioned tables, views, materialized
# views, foreign tables, and sequences (`SELECT last_value FROM s`, which pg_dump runs; a masked
# session refuses relations it does not know).
_RELKINDS = ("r", "p", "v", "m", "f", "S")
_CATALOG_SQL = """
SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text, a.attnum::int4, a.attname,
       CASE WHEN a.attnum = 1 AND c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
       CASE WHEN a.attnum = 1 THEN (SELECT pg_catalog.array_agg(i.inhparent::int8)
                                    FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) END,
       -- The column's type as strict masking casts to it: a domain's base type (RowDescription
       -- reports the base type too, and a masked value need not pass the domain's checks).
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
       CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod)
            ELSE pg_catalog.format_type(a.atttypid, a.atttypmod) END,
       a.attgenerated <> ''
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
ORDER BY c.oid, a.attnum
"""


class MaskingUnavailable(Exception):
    """The target's catalog could not be read: a session with masking rules (or any session: views are
    checked against the catalog) cannot start. `unreachable`: pgward could not even connect."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


# --- rules -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """One masking function with its parameters, as the data plane receives it."""

    function: str
    text: str | None = None
    first: int = 0
    last: int = 0
    # Masked at the source: statements are rewritten so that every read sees masked values.
    strict: bool = False

    def strictness(self) -> tuple[int, int, int, str]:
        # Lower sorts first = stricter: by function, then keeping fewer characters, then NULL over text.
        return (
            MASK_FUNCTIONS.index(self.function),
            self.first + self.last,
            0 if self.text is None else 1,
            self.text or "",
        )


def strictest(specs: Iterable[MaskSpec]) -> MaskSpec:
    """The strictest function of several rules; strict if any of them is strict."""
    items = list(specs)
    spec = min(items, key=MaskSpec.strictness)
    if not any(s.strict for s in items):
        return spec
    if spec.function == "hash":
        # Strict masking computes masks in the database, and an HMAC there would need the key in the
        # statement text. The one function stricter than hash that strict masking can compute: null.
        return MaskSpec("null", strict=True)
    return MaskSpec(spec.function, spec.text, spec.first, spec.last, strict=True)


@dataclass(frozen=True)
class CompiledMaskRule:
    policy: str
    label: str
    patterns: tuple[tuple[str, str, str], ...]
    tags: frozenset[str]
    spec: MaskSpec

    def matches(self, schema: str, table: str, column: str, tags: frozenset[str]) -> bool:
        if self.tags & tags:
            return True
        return any(
            fnmatch.fnmatchcase(schema, s)
            and fnmatch.fnmatchcase(table, t)
            and fnmatch.fnmatchcase(column, c)
            for s, t, c in self.patterns
        )


@dataclass(frozen=True)
class SessionMasking:
    """The masking rules in force for one identity on one connection, and the connection's tags."""

    rules: tuple[CompiledMaskRule, ...] = ()
    tags: tuple[tuple[tuple[str, str, str], frozenset[str]], ...] = ()
    # Tags the rules name that no policy on the connection assigns: the session is refused (a rule
    # that silently matched nothing would leave the columns in clear).
    undefined_tags: tuple[str, ...] = ()
    # Content detectors: (kind, function), strictest function first; the data plane scans columns
    # with no table origin. They need no catalog and change no decision.
    detectors: tuple[tuple[str, MaskSpec], ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def scope_detectors(self) -> list[dict[str, Any]]:
        """The detectors as the data plane's scope carries them (order matters: strictest first)."""
        return [
            {"kind": kind, "function": s.function, "text": s.text, "first": s.first, "last": s.last}
            for kind, s in self.detectors
        ]

    def key(self) -> str:
        data = [
            [
                [r.policy, r.label, list(r.patterns), sorted(r.tags), list(_spec_tuple(r.spec))]
                for r in self.rules
            ],
            [[list(p), sorted(t)] for p, t in self.tags],
        ]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]

    def column_tags(self, schema: str, table: str, column: str) -> frozenset[str]:
        out: set[str] = set()
        for (s, t, c), tags in self.tags:
            if (
                fnmatch.fnmatchcase(schema, s)
                and fnmatch.fnmatchcase(table, t)
                and fnmatch.fnmatchcase(column, c)
            ):
                out |= tags
        return frozenset(out)

    def spec_for(self, schema: str, table: str, column: str) -> MaskSpec | None:
        tags = self.column_tags(schema, table, column) if self.tags else frozenset()
        specs = [r.spec for r in self.rules if r.matches(schema, table, column, tags)]
        return strictest(specs) if specs else None


def _spec_tuple(spec: MaskSpec) -> tuple[str, str | None, int, int, bool]:
    return (spec.function, spec.text, spec.first, spec.last, spec.strict)


def session_masking(
    applicable: Sequence[PolicyDocument],
    on_connection: Sequence[PolicyDocument],
    groups: Iterable[str],
) -> SessionMasking:
    """Rules of the policies that apply to the identity, minus those it is exempt from; tags of every
    policy on the connection (tags describe columns, whoever the policy is for)."""
    mine = frozenset(groups)
    rules: list[CompiledMaskRule] = []
    for doc in applicable:
        for i, rule in enumerate(doc.masking):
            if mine & set(rule.exempt_groups):
                continue
            rules.append(
                CompiledMaskRule(
                    policy=doc.name,
                    label=rule.name or f"masking[{i}]",
                    patterns=tuple(split_column_pattern(p) for p in rule.columns),
                    tags=frozenset(rule.tags),
                    spec=MaskSpec(rule.function, rule.text, rule.first, rule.last, rule.strict),
                )
            )
    tags: dict[tuple[str, str, str], set[str]] = {}
    for doc in on_connection:
        for pattern, names in doc.column_tags.items():
            tags.setdefault(split_column_pattern(pattern), set()).update(names)
    defined: set[str] = set().union(*tags.values()) if tags else set()
    undefined = sorted({t for r in rules for t in r.tags} - defined)
    return SessionMasking(
        tuple(rules),
        tuple(sorted((p, frozenset(t)) for p, t in tags.items())),
        tuple(undefined),
        session_detectors(applicable, mine),
    )


def session_detectors(
    applicable: Sequence[PolicyDocument], groups: frozenset[str]
) -> tuple[tuple[str, MaskSpec], ...]:
    """Each kind any applicable policy detects (unless the identity is exempt), with the strictest
    function those policies give it; strictest first, so a value holding several kinds gets the
    strictest of their functions."""
    by_kind: dict[str, list[MaskSpec]] = {}
    for doc in applicable:
        d = doc.detectors
        if d is None or groups & set(d.exempt_groups):
            continue
        for kind in d.kinds:
            by_kind.setdefault(kind, []).append(MaskSpec(d.function, d.text, d.first, d.last))
    chosen = [(kind, strictest(specs)) for kind, specs in by_kind.items()]
    return tuple(sorted(chosen, key=lambda ks: (ks[1].strictness(), DETECTOR_KINDS.index(ks[0]))))


# --- the catalog -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRelation:
    oid: int
    schema: str
    name: str
    kind: str
    columns: tuple[tuple[int, str], ...]  # (attnum, name)
    definition: str | None = None  # views and materialized views
    parents: tuple[int, ...] = ()  # inheritance / partitioning
    # (base type OID, SQL type name) of each column, as `columns`; empty when not known.
    types: tuple[tuple[int, str], ...] = ()

    # Generated columns (names): COPY … TO without a column list leaves them out.
    generated: frozenset[str] = frozenset()

    def type_of(self, column: str) -> tuple[int, str] | None:
        for (_attnum, name), typ in zip(self.columns, self.types, strict=False):
            if name == column:
                return typ
        return None


@dataclass(frozen=True)
class Catalog:
    """The relations of one target database at one moment."""

    relations: tuple[CatalogRelation, ...]
    loaded_at: float = field(default_factory=time.monotonic)

    @functools.cached_property
    def digest(self) -> str:
        data = [
            [
                r.oid,
                r.schema,
                r.name,
                r.kind,
                list(r.columns),
                r.definition,
                list(r.parents),
                list(r.types),
                sorted(r.generated),
            ]
            for r in self.relations
        ]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def catalog_from_rows(rows: Iterable[Sequence[Any]]) -> Catalog:
    out: list[CatalogRelation] = []
    current: dict[str, Any] | None = None
    for oid, schema, name, kind, attnum, attname, definition, parents, *typ in rows:
        if current is None or current["oid"] != oid:
            if current is not None:
                out.append(CatalogRelation(**current))
            current = {
                "oid": int(oid),
                "schema": schema,
                "name": name,
                "kind": kind,
                "columns": (),
                "definition": definition,
                "parents": tuple(int(p) for p in parents or ()),
                "types": (),
                "generated": frozenset(),
            }
        current["columns"] = (*current["columns"], (int(attnum), attname))
        if len(typ) >= 2:
            current["types"] = (*current["types"], (int(typ[0]), str(typ[1])))
        if len(typ) >= 3 and typ[2]:
            current["generated"] = current["generated"] | {attname}
    if current is not None:
        out.append(CatalogRelation(**current))
    return Catalog(tuple(out))


async def load_catalog(target: ConnectionTarget) -> Catalog:
    """Read the target's relations and columns with the connection's stored credentials."""
    kwargs: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "dbname": target.database,
        "user": target.username,
        "sslmode": target.tls_mode,
        "connect_timeout": 10,
        "application_name": "pgward catalog",
    }
    if target.password is not None:
        kwargs["password"] = target.password
    if target.sslrootcert_path:
        kwargs["sslrootcert"] = target.sslrootcert_path
    try:
        conn = await psycopg.AsyncConnection.connect(**kwargs)
    except (psycopg.Error, OSError) as exc:
        raise MaskingUnavailable(_first_line(exc), unreachable=True) from exc
    try:
        async with conn:
            # An empty search_path makes pg_get_viewdef qualify every name.
            await conn.execute("SET search_path = ''")
            cur = await conn.execute(_CATALOG_SQL, [list(_RELKINDS)])
            rows = await cur.fetchall()
    except (psycopg.Error, OSError) as exc:
        raise MaskingUnavailable(_first_line(exc)) from exc
    return catalog_from_rows(rows)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class CatalogCache:
    """Catalog snapshots per connection, reused for `ttl` seconds; `invalidate` after DDL."""

    def __init__(
        self,
        ttl: float = CATALOG_TTL,
        loader: Callable[[ConnectionTarget], Awaitable[Catalog]] = load_catalog,
    ) -> None:
        self.ttl = ttl
        self.loader = loader
        self._entries: dict[tuple[str, str, int, str, str], Catalog] = {}
        self._locks: dict[tuple[str, str, int, str, str], asyncio.Lock] = {}
        self._generation: dict[str, int] = {}

    @staticmethod
    def _key(target: ConnectionTarget) -> tuple[str, str, int, str, str]:
        return (target.name, target.host, target.port, target.database, target.username)

    async def get(self, target: ConnectionTarget) -> Catalog:
        key = self._key(target)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is not None and time.monotonic() - entry.loaded_at < self.ttl:
                return entry
            generation = self._generation.get(target.name, 0)
            catalog = await self.loader(target)
            # A DDL allowed while the catalog was being read may not be in it: do not keep it.
            if self._generation.get(target.name, 0) == generation:
                self._entries[key] = catalog
            return catalog

    def invalidate(self, connection: str) -> None:
        self._generation[connection] = self._generation.get(connection, 0) + 1
        for key in [k for k in self._entries if k[0] == connection]:
            del self._entries[key]


# --- resolution ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrictRelation:
    """A relation with strict-masked columns, as the rewriter replaces it: every column in order, and
    the SQL expression (over the quoted column name) of each masked one."""

    schema: str
    name: str
    columns: tuple[str, ...]
    # Masked column -> (its mask, base type OID, SQL type name); types None when not known.
    masked: Mapping[str, tuple[MaskSpec, int | None, str | None]]

    def expression(self, column: str, reference: str) -> str:
        """SQL of the masked value of `column`, read through the SQL column reference `reference`."""
        from control_plane.policy.strict_sql import mask_expression

        spec, type_oid, type_sql = self.masked[column]
        return mask_expression(spec, reference, type_oid, type_sql)

    def select_list(self) -> str:
        from control_plane.policy.strict_sql import quote_ident

        items = []
        for c in self.columns:
            name = quote_ident(c)
            items.append(f"{self.expression(c, name)} AS {name}" if c in self.masked else name)
        return ", ".join(items)


@dataclass(frozen=True)
class ResolvedMasks:
    """What one session's masks are on one catalog snapshot."""

    masks: Mapping[tuple[int, int], MaskSpec]
    index: MaskIndex
    digest: str
    # Relations with strict-masked columns, by (schema, name): statements reading them are rewritten.
    strict: Mapping[tuple[str, str], StrictRelation] = field(default_factory=dict)
    # Masked columns by label (schema.table.column, the leak analysis's taint): their function and
    # type OID, for COPY plans. None where two relations share a label (pgward then refuses the COPY).
    by_label: Mapping[str, tuple[MaskSpec, int] | None] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.masks) or self.index.masked

    def copy_plan(self, shape: CopyShape) -> dict[str, Any]:
        """The data plane's plan for one COPY … TO STDOUT: its format options and, when any output
        column carries masked data, what to do with each column (by position)."""
        plan = shape.options.answer()
        columns: list[dict[str, Any] | None] | None = None
        if shape.columns is not None and any(c.taint for c in shape.columns):
            columns = []
            for col in shape.columns:
                if not col.taint:
                    columns.append(None)
                    continue
                label = sorted(col.taint)[0]
                found = [self.by_label.get(t) for t in sorted(col.taint)]
                known = [f for f in found if f is not None]
                if not col.origin or len(known) != len(found):
                    raise Leak(f"pgward cannot tell how to mask column {label} in COPY output")
                if len({t for _, t in known}) != 1:
                    raise Leak(
                        f"column {label} is masked for you and its type in COPY output is ambiguous; "
                        "qualify the table names"
                    )
                spec = strictest(s for s, _ in known)
                columns.append({**_spec_dict(spec), "type_oid": known[0][1]})
        plan["columns"] = columns
        return plan

    def scope_masks(self) -> list[dict[str, Any]]:
        return [
            {
                "table_oid": oid,
                "attnum": attnum,
                "function": spec.function,
                "text": spec.text,
                "first": spec.first,
                "last": spec.last,
            }
            for (oid, attnum), spec in sorted(self.masks.items())
        ]


def _spec_dict(spec: MaskSpec) -> dict[str, Any]:
    return {"function": spec.function, "text": spec.text, "first": spec.first, "last": spec.last}


def resolve(masking: SessionMasking, catalog: Catalog) -> ResolvedMasks:
    """Map the rules to (table OID, attnum), propagate them to child tables and views, and build the
    index the leak analysis uses."""
    by_oid = {r.oid: r for r in catalog.relations}
    specs: dict[int, dict[str, MaskSpec]] = {}
    for rel in catalog.relations:
        for _attnum, column in rel.columns:
            spec = masking.spec_for(rel.schema, rel.name, column)
            if spec is not None:
                specs.setdefault(rel.oid, {})[column] = spec
    # Partitions and inheritance children hold the parent's rows: a masked parent column is masked in
    # every descendant that has it (selecting the child directly reports the child as origin).
    changed = True
    while changed:
        changed = False
        for rel in catalog.relations:
            for parent in rel.parents:
                for column, spec in specs.get(parent, {}).items():
                    if any(name == column for _, name in rel.columns):
                        own = specs.setdefault(rel.oid, {})
                        new = strictest([spec, own[column]]) if column in own else spec
                        if own.get(column) != new:
                            own[column] = new
                            changed = True
    relations: dict[tuple[str, str], Relation] = {}
    for rel in catalog.relations:
        names = tuple(name for _, name in rel.columns)
        tainted = {c: Col(frozenset({f"{rel.schema}.{rel.name}.{c}"})) for c in specs.get(rel.oid, {})}
        relations[(rel.schema, rel.name)] = Relation(
            rel.schema, rel.name, names, tainted, generated=rel.generated
        )
    _propagate_to_views(catalog, by_oid, specs, relations)
    strict = _strict_relations(catalog, specs)
    for (schema, name), srel in strict.items():
        relations[(schema, name)] = replace(relations[(schema, name)], strict=frozenset(srel.masked))
    masks: dict[tuple[int, int], MaskSpec] = {}
    by_label: dict[str, tuple[MaskSpec, int] | None] = {}
    for rel in catalog.relations:
        own = specs.get(rel.oid, {})
        for attnum, column in rel.columns:
            if column in own:
                masks[(rel.oid, attnum)] = own[column]
                label = f"{rel.schema}.{rel.name}.{column}"
                typ = rel.type_of(column)
                entry = (own[column], typ[0] if typ else 0)
                # Names with dots can make two columns' labels equal: never guess between them.
                by_label[label] = entry if by_label.get(label, entry) == entry else None
    digest_data = [
        [[o, a, *_spec_tuple(s)] for (o, a), s in sorted(masks.items())],
        sorted(
            [
                k[0],
                k[1],
                r.refused or "",
                sorted((c, sorted(v.taint), v.origin) for c, v in r.tainted.items()),
            ]
            for k, r in relations.items()
            if r.tainted or r.refused
        ),
    ]
    digest = hashlib.sha256(json.dumps(digest_data).encode()).hexdigest()[:16]
    return ResolvedMasks(masks, MaskIndex(relations), digest, strict, by_label)


def _strict_relations(
    catalog: Catalog, specs: Mapping[int, Mapping[str, MaskSpec]]
) -> dict[tuple[str, str], StrictRelation]:
    out: dict[tuple[str, str], StrictRelation] = {}
    for rel in catalog.relations:
        own = {c: s for c, s in specs.get(rel.oid, {}).items() if s.strict}
        if not own:
            continue
        masked: dict[str, tuple[MaskSpec, int | None, str | None]] = {}
        for column, spec in own.items():
            typ = rel.type_of(column)
            masked[column] = (spec, typ[0] if typ else None, typ[1] if typ else None)
        out[(rel.schema, rel.name)] = StrictRelation(
            rel.schema, rel.name, tuple(n for _, n in rel.columns), masked
        )
    return out


def _propagate_to_views(
    catalog: Catalog,
    by_oid: Mapping[int, CatalogRelation],
    specs: dict[int, dict[str, MaskSpec]],
    relations: dict[tuple[str, str], Relation],
) -> None:
    """A view column that is a plain reference to a masked column is masked like it (PostgreSQL reports
    the view as its origin); a view column computed from masked data is marked so that selecting it is
    refused; a view pgward cannot analyse is refused whole. Views over views: repeat until stable."""
    views = [r for r in catalog.relations if r.definition is not None]
    for _ in range(len(views) + 1):
        changed = False
        index = MaskIndex(relations)
        lookup = {
            f"{by_oid[oid].schema}.{by_oid[oid].name}.{column}": spec
            for oid, columns in specs.items()
            for column, spec in columns.items()
        }
        for view in views:
            key = (view.schema, view.name)
            before = relations[key]
            after = _analyse_view(view, index, specs, lookup)
            if after != before:
                relations[key] = after
                changed = True
        if not changed:
            return
    # Cycles cannot happen in PostgreSQL views; stop anyway and keep the last (conservative) state.


def _analyse_view(
    view: CatalogRelation,
    index: MaskIndex,
    specs: dict[int, dict[str, MaskSpec]],
    lookup: Mapping[str, MaskSpec],
) -> Relation:
    names = tuple(name for _, name in view.columns)
    label = f"{view.schema}.{view.name}"
    own = specs.get(view.oid, {})
    base = Relation(view.schema, view.name, names, {c: Col(frozenset({f"{label}.{c}"})) for c in own})
    try:
        statements = parse(view.definition or "")
        if len(statements) != 1 or statements[0][0] is None:
            raise Unparsable("not one statement")
        outputs = view_outputs(statements[0][0], index)
    except Leak as leak:
        return Relation(
            view.schema,
            view.name,
            names,
            base.tainted,
            refused=f"view {label} reads masked columns in a way pgward cannot mask ({leak.message})",
        )
    except Unparsable:
        return Relation(
            view.schema,
            view.name,
            names,
            base.tainted,
            refused=f"pgward cannot read the definition of view {label}",
        )
    tainted = dict(base.tainted)
    inherited: dict[str, MaskSpec] = {}
    for (column, col), (_attnum, name) in zip(outputs, view.columns, strict=False):
        del column  # PostgreSQL's own column names are authoritative
        if not col.taint or name in own:
            continue
        if col.origin:
            # A plain reference: mask the view column like the strictest column it shows.
            found = [lookup[t] for t in col.taint if t in lookup]
            if found:
                inherited[name] = strictest(found)
                tainted[name] = Col(col.taint)
                continue
        tainted[name] = Col(col.taint, False, col.how or f"a computed column of view {label}")
    if inherited:
        specs[view.oid] = {**inherited, **own}
    return Relation(view.schema, view.name, names, tainted)


# --- the hash key ----------------------------------------------------------------------------------


def mask_key(secret: bytes) -> str:
    """The deployment's HMAC key for `hash`, derived from its secret key (every process agrees)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASK_KEY_INFO).derive(secret).hex()
