"""Statement analysis with libpg_query (pglast): split a Query string and name each statement.

This is the per-statement decision point of the data plane. The policy engine builds on it; until
then it enforces the configured deny list of statement types (pglast node names such as
``DropdbStmt`` or ``AlterSystemStmt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pglast
from pglast import ast
from pglast.parser import ParseError


@dataclass(frozen=True)
class Statement:
    kind: str  # the pglast node name, e.g. "SelectStmt"
    text: str


class UnparsableStatement(Exception):
    """The PostgreSQL parser rejected the text; `message` is its error."""

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


def split(sql: str) -> list[Statement]:
    """Every statement in `sql` (a Query string may hold several), with its node type."""
    try:
        raw = pglast.parse_sql(sql)
    except ParseError as e:
        raise UnparsableStatement(
            str(e.args[0]) if e.args else str(e), getattr(e, "location", None)
        ) from None
    statements: list[Statement] = []
    encoded = sql.encode()
    for item in raw:
        node = item.stmt
        # stmt_location/len are byte offsets; a len of 0 means "to the end of the string".
        start = item.stmt_location or 0
        end = start + item.stmt_len if item.stmt_len else len(encoded)
        text = encoded[start:end].decode(errors="replace").strip()
        statements.append(Statement(kind=type(node).__name__ if node is not None else "Empty", text=text))
    return statements


def is_node_name(name: str) -> bool:
    """True when `name` is a pglast AST node type (to validate deny lists)."""
    return isinstance(getattr(ast, name, None), type)
