"""Tag proposals: sample a connection's text columns, run the data plane's content detectors over the
sample, and propose `column_tags` for a policy. It proposes; it never changes a policy."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from control_plane.connections.service import ConnectionTarget
from control_plane.dataplane import detect_counts

# The tag each detector kind proposes (the names the docs' examples use).
KIND_TAGS: dict[str, str] = {"email": "pii.email", "card": "pii.card", "ssn": "pii.ssn", "phone": "pii.phone"}
DEFAULT_SAMPLE = 100
MAX_SAMPLE = 10_000
DEFAULT_MIN_RATE = 0.1

# Columns of tables, partitioned tables, materialized views and foreign tables whose values are text
# (string types, domains over them, json, jsonb). Partitions are sampled through their parent.
_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
  AND (t.typcategory = 'S' OR a.atttypid IN ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype))
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
ORDER BY n.nspname, c.relname, a.attnum
"""
_PLAIN = re.compile(r"^[A-Za-z0-9_]+$")


class ProposalUnavailable(Exception):
    """The target could not be reached or read."""


@dataclass(frozen=True)
class ColumnProposal:
    schema: str
    table: str
    column: str
    sampled: int  # non-NULL values scanned
    hits: dict[str, int]  # kind → values that contain it

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    def rate(self, kind: str) -> float:
        return self.hits.get(kind, 0) / self.sampled if self.sampled else 0.0

    def tags(self, min_rate: float) -> list[str]:
        return [KIND_TAGS[k] for k in KIND_TAGS if self.hits.get(k) and self.rate(k) >= min_rate]


@dataclass(frozen=True)
class TagProposal:
    connection: str
    sample: int
    min_rate: float
    columns: list[ColumnProposal] = field(default_factory=list)  # every column with a hit
    skipped: list[str] = field(default_factory=list)  # tables that could not be read, with why

    def proposed(self) -> list[ColumnProposal]:
        return [c for c in self.columns if c.tags(self.min_rate)]

    def yaml(self) -> str:
        """A `column_tags:` snippet to paste into a policy, with hit rates in comments."""
        lines = [
            f'# Tags proposed by pgward for connection "{self.connection}": up to {self.sample} rows '
            "sampled per table,",
            f"# columns where a detector matched at least {self.min_rate:.0%} of the non-NULL values. "
            "Review before applying.",
        ]
        proposed = self.proposed()
        if not proposed:
            lines.append("column_tags: {}")
        else:
            lines.append("column_tags:")
            for c in proposed:
                if any("." in p for p in (c.schema, c.table, c.column)):
                    # column_tags keys split on dots: such a name cannot be written as one.
                    lines.append(f"  # {c.name}: {c.tags(self.min_rate)} (a name with a dot; tag it by hand)")
                    continue
                rates = ", ".join(
                    f"{k} {self.rate_text(c, k)}"
                    for k in KIND_TAGS
                    if c.hits.get(k) and c.rate(k) >= self.min_rate
                )
                lines.append(f"  {_key(c)}: [{', '.join(c.tags(self.min_rate))}]  # {rates} of {c.sampled}")
        below = [c for c in self.columns if c not in proposed]
        for c in below:
            rates = ", ".join(f"{k} {self.rate_text(c, k)}" for k in KIND_TAGS if c.hits.get(k))
            lines.append(f"# below the threshold: {c.name} ({rates} of {c.sampled})")
        for why in self.skipped:
            lines.append(f"# not sampled: {why}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def rate_text(c: ColumnProposal, kind: str) -> str:
        return f"{c.rate(kind):.0%}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "sample": self.sample,
            "min_rate": self.min_rate,
            "columns": [
                {
                    "column": c.name,
                    "sampled": c.sampled,
                    "hits": {k: n for k, n in c.hits.items() if n},
                    "rates": {k: round(c.rate(k), 4) for k, n in c.hits.items() if n},
                    "tags": c.tags(self.min_rate),
                }
                for c in self.columns
            ],
            "skipped": self.skipped,
            "yaml": self.yaml(),
        }


def _key(c: ColumnProposal) -> str:
    """The column as a column_tags key: a glob matching exactly this column, quoted when YAML needs it."""
    parts = [re.sub(r"([*?\[])", r"[\1]", p) for p in (c.schema, c.table, c.column)]
    key = ".".join(parts)
    return key if all(_PLAIN.match(p) for p in parts) else json.dumps(key)


async def propose_tags(
    target: ConnectionTarget, *, sample: int = DEFAULT_SAMPLE, min_rate: float = DEFAULT_MIN_RATE
) -> TagProposal:
    """Read up to `sample` rows of every table with text columns (read-only, with the connection's
    stored credentials) and count what the detectors find in each column."""
    if not 1 <= sample <= MAX_SAMPLE:
        raise ValueError(f"sample must be between 1 and {MAX_SAMPLE} rows")
    kwargs: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "dbname": target.database,
        "user": target.username,
        "sslmode": target.tls_mode,
        "connect_timeout": 10,
        "application_name": "pgward tag proposal",
        "autocommit": True,
    }
    if target.password is not None:
        kwargs["password"] = target.password
    if target.sslrootcert_path:
        kwargs["sslrootcert"] = target.sslrootcert_path
    try:
        conn = await psycopg.AsyncConnection.connect(**kwargs)
    except (psycopg.Error, OSError) as exc:
        raise ProposalUnavailable(_first_line(exc)) from exc
    columns: list[ColumnProposal] = []
    skipped: list[str] = []
    try:
        async with conn:
            # Sampling must never change anything, nor run long on a busy target.
            await conn.execute("SET default_transaction_read_only = on")
            await conn.execute("SET statement_timeout = '30s'")
            cur = await conn.execute(_COLUMNS_SQL)
            tables: dict[tuple[str, str], list[str]] = {}
            for schema, table, column in await cur.fetchall():
                tables.setdefault((schema, table), []).append(column)
            for (schema, table), names in tables.items():
                query = sql.SQL("SELECT {} FROM {} LIMIT {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
                    sql.Identifier(schema, table),
                    sql.Literal(sample),
                )
                try:
                    rows = await (await conn.execute(query)).fetchall()
                except psycopg.Error as exc:
                    skipped.append(f"{schema}.{table}: {_first_line(exc)}")
                    continue
                for i, name in enumerate(names):
                    values = [r[i] for r in rows]
                    hits = detect_counts(values)
                    if any(hits.values()):
                        sampled = sum(v is not None for v in values)
                        columns.append(ColumnProposal(schema, table, name, sampled, hits))
    except (psycopg.Error, OSError) as exc:
        raise ProposalUnavailable(_first_line(exc)) from exc
    return TagProposal(target.name, sample, min_rate, columns, skipped)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
