"""COPY … TO STDOUT in masked sessions: the statement's options, and what each output column carries.

The data plane rewrites COPY output by column position, so a masked session's COPY needs a plan: per
output column the masking function (or none) and the type OID, and the format options that decide how
rows, fields, NULLs and quoting look. This module reads the options from the parse tree; the leak
analysis (`leaks.py`) finds the columns and `ResolvedMasks.copy_plan` turns both into the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.policy.leaks import Col

# Options that change what COPY … TO writes, and options that only apply to COPY FROM (the server
# refuses those on COPY TO). Anything else is refused in a masked session: pgward would not know how
# it changes the output it has to parse.
_OUTPUT_OPTIONS = frozenset(
    {"format", "delimiter", "null", "header", "quote", "escape", "force_quote", "encoding"}
)
_IGNORED_OPTIONS = frozenset(
    {"freeze", "force_not_null", "force_null", "default", "on_error", "log_verbosity", "reject_limit"}
)
# Client-only encodings whose multibyte characters can contain the bytes of `\\`, delimiters and quotes
# (PostgreSQL's PG_ENCODING_IS_CLIENT_ONLY): text and CSV output in them cannot be split by bytes.
UNSAFE_ENCODINGS = frozenset({"SJIS", "SHIFTJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "SHIFTJIS2004"})
_TRUE = frozenset({"true", "on", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "off", "0", "no", "f", "n"})


class CopyRefused(Exception):
    """The COPY cannot be masked as written; `message` says why (SQLSTATE 42501)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _string(arg: Any) -> str | None:
    if isinstance(arg, dict) and "String" in arg:
        return str(arg["String"].get("sval", ""))
    return None


def _boolean(name: str, arg: Any) -> bool:
    """PostgreSQL's defGetBoolean (plus HEADER's `match`, which COPY TO refuses anyway)."""
    if arg is None:
        return True
    if isinstance(arg, dict) and "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if isinstance(arg, dict) and "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    text = (_string(arg) or "").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CopyRefused(f"COPY option {name} has a value pgward does not understand")


def _ascii(name: str, value: str) -> str:
    # Single-byte ASCII only: the data plane splits COPY output by bytes, in whatever client encoding.
    if not value.isascii():
        raise CopyRefused(f"COPY option {name} must be ASCII in a session with masked columns")
    return value


def normalise_encoding(name: str) -> str:
    return "".join(ch for ch in name.upper() if ch.isalnum())


@dataclass(frozen=True)
class CopyOptions:
    """The options of one COPY … TO STDOUT that decide how its output looks."""

    format: str = "text"
    delimiter: str | None = None
    null: str | None = None
    quote: str | None = None
    escape: str | None = None
    header: bool = False
    force_quote: bool = False  # some or all columns are always quoted (CSV)

    @classmethod
    def parse(cls, options: list[Any] | None) -> CopyOptions:
        values: dict[str, Any] = {}
        for item in options or ():
            elem = item.get("DefElem", {}) if isinstance(item, dict) else {}
            name = str(elem.get("defname", "")).lower()
            arg = elem.get("arg")
            if name in _IGNORED_OPTIONS:
                continue
            if name not in _OUTPUT_OPTIONS:
                raise CopyRefused(
                    f"COPY option {name or '?'} is not supported in a session with masked columns"
                )
            if name == "format":
                fmt = (_string(arg) or "").lower()
                if fmt not in ("text", "csv", "binary"):
                    raise CopyRefused(
                        f"COPY format {fmt or '?'} is not supported in a session with masked columns"
                    )
                values["format"] = fmt
            elif name in ("delimiter", "null", "quote", "escape"):
                text = _string(arg)
                if text is None:
                    raise CopyRefused(f"COPY option {name} needs a string in a session with masked columns")
                values[name] = _ascii(name, text)
            elif name == "header":
                values["header"] = _boolean(name, arg)
            elif name == "force_quote":
                values["force_quote"] = True
            elif name == "encoding":
                encoding = normalise_encoding(_string(arg) or "")
                if encoding in UNSAFE_ENCODINGS:
                    raise CopyRefused(
                        f"COPY output in encoding {_string(arg)} cannot be masked (its characters can "
                        "contain the bytes of delimiters and quotes); use UTF8"
                    )
        return cls(**values)

    def answer(self) -> dict[str, Any]:
        """The format part of a COPY plan, defaults filled in as PostgreSQL fills them."""
        if self.format == "binary":
            return {"format": "binary", "header": False}
        csv = self.format == "csv"
        quote = self.quote if self.quote is not None else '"'
        return {
            "format": self.format,
            "delimiter": self.delimiter if self.delimiter is not None else ("," if csv else "\t"),
            "null": self.null if self.null is not None else ("" if csv else "\\N"),
            "quote": quote if csv else None,
            "escape": (self.escape if self.escape is not None else quote) if csv else None,
            "header": self.header,
        }


@dataclass(frozen=True)
class CopyShape:
    """One COPY … TO STDOUT of a masked session: what each output column carries, in output order.

    `columns` is None when pgward cannot tell the output's column positions exactly; the analysis only
    allows that when no column carries masked data (the data plane then relays the output unchanged)."""

    columns: tuple[Col, ...] | None
    options: CopyOptions
