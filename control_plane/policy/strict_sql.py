"""SQL for strict masking: each masking function as an expression the database computes at the source.

The expressions give the same values as the data plane's functions (dataplane/src/mask/functions.rs)
for text columns, and the same typed defaults for other columns. They name only `pg_catalog`
functions, schema-qualified, and no operators: a session that changes its search_path cannot put its
own function or operator in their place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.policy.masking import MaskSpec

# Base type OIDs the data plane treats as text (is_text_type in functions.rs).
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 18})
# The data plane's typed defaults (default_value in functions.rs), by base type OID.
DEFAULTS: dict[int, str] = {
    16: "false",
    21: "0",
    23: "0",
    20: "0",
    26: "0",
    700: "0",
    701: "0",
    1700: "0",
    1082: "1970-01-01",
    1083: "00:00:00",
    1114: "1970-01-01 00:00:00",
    1184: "1970-01-01 00:00:00+00",
    2950: "00000000-0000-0000-0000-000000000000",
    114: "null",
    3802: "null",
    17: "\\x",
}

_TEXT = "pg_catalog.text"


def _f(name: str, *args: str) -> str:
    return f"pg_catalog.{name}({', '.join(args)})"


def _lit(value: str) -> str:
    return f"CAST({quote_literal(value)} AS {_TEXT})"


def _int(value: int) -> str:
    return f"CAST({int(value)} AS pg_catalog.int4)"


def mask_expression(spec: MaskSpec, column: str, type_oid: int | None, type_sql: str | None) -> str:
    """The masked value of `column` (an SQL column reference) as an expression of the column's type.

    NULL stays NULL, as in the data plane. A type pgward has no default for gets NULL (always a valid
    value of the type)."""
    target = type_sql or _TEXT
    if spec.function == "null" or (spec.function == "redact" and spec.text is None):
        return f"CAST(NULL AS {target})"
    if type_oid not in TEXT_TYPES:
        default = DEFAULTS.get(type_oid) if type_oid is not None else None
        if default is None:
            return f"CAST(NULL AS {target})"
        value = f"CAST({quote_literal(default)} AS {target})"
    else:
        value = f"CAST({_text_mask(spec, f'CAST({column} AS {_TEXT})')} AS {target})"
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE {value} END"


def _text_mask(spec: MaskSpec, t: str) -> str:
    if spec.function == "redact":
        return _lit(spec.text or "")
    if spec.function == "default":
        return _lit("")
    if spec.function == "email":
        # Everything after the last '@' when there is something: rsplit_once('@') in functions.rs.
        domain = _f("substring", t, _lit("@([^@]+)$"))
        return (
            f"CASE WHEN {domain} IS NULL THEN {_lit('****')} ELSE {_f('concat', _lit('****@'), domain)} END"
        )
    if spec.function == "partial":
        n = _f("char_length", t)
        kept = _int(spec.first + spec.last)
        stars = _f("repeat", _lit("*"), _f("int4mi", n, kept))
        kept_text = _f("concat", _f('"left"', t, _int(spec.first)), stars, _f('"right"', t, _int(spec.last)))
        return (
            f"CASE WHEN {_f('int4le', n, kept)} THEN {_f('repeat', _lit('*'), _f('int4larger', n, _int(1)))} "
            f"ELSE {kept_text} END"
        )
    if spec.function == "last4":
        digits = _f("regexp_replace", t, _lit("[^0-9]"), _lit(""), _lit("g"))
        n = _f("char_length", digits)
        masked = _f(
            "concat", _f("repeat", _lit("*"), _f("int4mi", n, _int(4))), _f('"right"', digits, _int(4))
        )
        return f"CASE WHEN {_f('int4le', n, _int(4))} THEN {_lit('****')} ELSE {masked} END"
    # hash never reaches here (strictest() turns a strict hash into null); anything unknown: NULL.
    return f"CAST(NULL AS {_TEXT})"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # E'' escapes backslashes explicitly, so the literal means the same whatever
    # standard_conforming_strings the target uses.
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"
