"""Turn a recording's protocol messages into transcript events: statements, results, errors,
notices, COPY data. Offline tooling: the hot path never runs this."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from control_plane.recordings.messages import Message

# Type OIDs decoded from the binary format; other binary values are shown as hex.
_TYPE_NAMES = {
    16: "bool",
    17: "bytea",
    18: "char",
    19: "name",
    20: "int8",
    21: "int2",
    23: "int4",
    25: "text",
    26: "oid",
    114: "json",
    700: "float4",
    701: "float8",
    1042: "bpchar",
    1043: "varchar",
    1082: "date",
    1114: "timestamp",
    1184: "timestamptz",
    1700: "numeric",
    2950: "uuid",
    3802: "jsonb",
}
_PG_EPOCH = datetime(2000, 1, 1)
_FIELDS = {
    "S": "severity_local",
    "V": "severity",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "n": "constraint",
}


def _cstr(body: bytes, at: int) -> tuple[str, int]:
    end = body.index(b"\0", at)
    return body[at:end].decode("utf-8", "replace"), end + 1


def _binary(oid: int, raw: bytes) -> Any:
    try:
        if oid == 16:
            return raw == b"\x01"
        if oid in (21, 23, 20, 26):
            fmt = {21: "!h", 23: "!i", 20: "!q", 26: "!I"}[oid]
            return struct.unpack(fmt, raw)[0]
        if oid == 700:
            return struct.unpack("!f", raw)[0]
        if oid == 701:
            return struct.unpack("!d", raw)[0]
        if oid in (25, 19, 1042, 1043, 114, 18):
            return raw.decode("utf-8", "replace")
        if oid == 3802:
            return raw[1:].decode("utf-8", "replace")
        if oid == 2950:
            return str(uuid.UUID(bytes=raw))
        if oid == 1082:
            return (date(2000, 1, 1) + timedelta(days=struct.unpack("!i", raw)[0])).isoformat()
        if oid in (1114, 1184):
            value = _PG_EPOCH + timedelta(microseconds=struct.unpack("!q", raw)[0])
            return value.isoformat() + ("+00" if oid == 1184 else "")
        if oid == 1700:
            return str(_numeric(raw))
        if oid == 17:
            return "\\x" + raw.hex()
    except (struct.error, ValueError, OverflowError):
        pass
    return "\\x" + raw.hex()


def _numeric(raw: bytes) -> Decimal | str:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", raw)
    if sign == 0xC000:
        return "NaN"
    digits = struct.unpack_from(f"!{ndigits}H", raw, 8)
    value = Decimal(0)
    for i, d in enumerate(digits):
        value += Decimal(d) * (Decimal(10000) ** (weight - i))
    if sign == 0x4000:
        value = -value
    return value.quantize(Decimal(1).scaleb(-dscale)) if dscale else value


def _value(raw: bytes | None, fmt: int, oid: int) -> Any:
    if raw is None:
        return None
    if fmt == 0:
        return raw.decode("utf-8", "replace")
    return _binary(oid, raw)


def _fields(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    at = 0
    while at < len(body) and body[at] != 0:
        code = chr(body[at])
        text, at = _cstr(body, at + 1)
        out[_FIELDS.get(code, code)] = text
    return out


class Transcript:
    """Consumes messages in relay order and yields events (dicts, JSON-ready)."""

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.statements: dict[str, tuple[str, list[int]]] = {}  # prepared name -> (sql, param oids)
        self.portals: dict[
            str, tuple[str, list[Any], list[int]]
        ] = {}  # portal -> (sql, params, result formats)
        self.described: dict[str, list[dict[str, Any]]] = {}
        self.result: dict[str, Any] | None = None
        self.formats: list[int] = []

    def events(self, messages: Iterator[Message]) -> Iterator[dict[str, Any]]:
        for m in messages:
            t = m.offset_us / 1e6
            handler = self._client if m.direction == "client" else self._server
            for event in handler(m):
                event["t"] = round(t, 6)
                yield event
        if self.result is not None:
            yield self._flush()

    def _client(self, m: Message) -> Iterator[dict[str, Any]]:
        body = m.body
        if m.tag == "Q":
            sql, _ = _cstr(body, 0)
            yield {"type": "statement", "protocol": "simple", "sql": sql}
        elif m.tag == "P":
            name, at = _cstr(body, 0)
            sql, at = _cstr(body, at)
            (n,) = struct.unpack_from("!h", body, at)
            oids = list(struct.unpack_from(f"!{n}I", body, at + 2))
            self.statements[name] = (sql, oids)
        elif m.tag == "B":
            portal, at = _cstr(body, 0)
            name, at = _cstr(body, at)
            (nf,) = struct.unpack_from("!h", body, at)
            pformats = list(struct.unpack_from(f"!{nf}h", body, at + 2))
            at += 2 + 2 * nf
            (np,) = struct.unpack_from("!h", body, at)
            at += 2
            sql, oids = self.statements.get(name, ("", []))
            params: list[Any] = []
            for i in range(np):
                (length,) = struct.unpack_from("!i", body, at)
                at += 4
                raw = None if length < 0 else body[at : at + length]
                at += max(length, 0)
                fmt = pformats[0] if len(pformats) == 1 else (pformats[i] if i < len(pformats) else 0)
                params.append(_value(raw, fmt, oids[i] if i < len(oids) else 0))
            (nr,) = struct.unpack_from("!h", body, at)
            rformats = list(struct.unpack_from(f"!{nr}h", body, at + 2))
            self.portals[portal] = (sql, params, rformats)
        elif m.tag == "E":
            portal, _ = _cstr(body, 0)
            sql, params, rformats = self.portals.get(portal, ("", [], []))
            self.formats = rformats
            event: dict[str, Any] = {"type": "statement", "protocol": "extended", "sql": sql}
            if params:
                event["params"] = params
            yield event
        elif m.tag == "d":
            yield {"type": "copy_data", "direction": "in", "data": body.decode("utf-8", "replace")}
        elif m.tag == "X":
            yield {"type": "terminate"}

    def _server(self, m: Message) -> Iterator[dict[str, Any]]:
        body = m.body
        if m.tag == "T":
            if self.result is not None:
                yield self._flush()
            (n,) = struct.unpack_from("!h", body, 0)
            at = 2
            columns = []
            formats = []
            for _ in range(n):
                name, at = _cstr(body, at)
                _table, _attnum, oid, _size, _mod, fmt = struct.unpack_from("!IhIhih", body, at)
                at += 18
                columns.append({"name": name, "type_oid": oid, "type": _TYPE_NAMES.get(oid, str(oid))})
                formats.append(fmt)
            self.result = {
                "type": "result",
                "columns": columns,
                "rows": [],
                "row_count": 0,
                "_formats": formats,
            }
        elif m.tag == "D":
            if self.result is None:
                self.result = {"type": "result", "columns": [], "rows": [], "row_count": 0, "_formats": []}
            (n,) = struct.unpack_from("!h", body, 0)
            at = 2
            row = []
            cols = self.result["columns"]
            formats = self.result["_formats"]
            for i in range(n):
                (length,) = struct.unpack_from("!i", body, at)
                at += 4
                raw = None if length < 0 else body[at : at + length]
                at += max(length, 0)
                fmt = formats[i] if i < len(formats) else (self.formats[0] if len(self.formats) == 1 else 0)
                oid = cols[i]["type_oid"] if i < len(cols) else 0
                row.append(_value(raw, fmt, oid))
            self.result["row_count"] += 1
            if self.max_rows is None or len(self.result["rows"]) < self.max_rows:
                self.result["rows"].append(row)
        elif m.tag == "C":
            tag, _ = _cstr(body, 0)
            if self.result is not None:
                event = self._flush()
                event["command"] = tag
                yield event
            else:
                yield {"type": "command", "command": tag}
        elif m.tag == "E":
            if self.result is not None:
                yield self._flush()
            yield {"type": "error", **_fields(body)}
        elif m.tag == "N":
            yield {"type": "notice", **_fields(body)}
        elif m.tag == "A":
            channel, at = _cstr(body, 4)
            payload, _ = _cstr(body, at)
            yield {"type": "notification", "channel": channel, "payload": payload}
        elif m.tag == "d":
            yield {"type": "copy_data", "direction": "out", "data": body.decode("utf-8", "replace")}
        elif m.tag == "I":
            yield {"type": "empty_query"}
        elif m.tag == "t":
            pass

    def _flush(self) -> dict[str, Any]:
        assert self.result is not None
        event = self.result
        event.pop("_formats", None)
        self.result = None
        return event


def wall_clock(meta: dict[str, Any]) -> str:
    started = datetime.fromtimestamp(meta.get("started_at_us", 0) / 1e6, tz=UTC)
    return started.isoformat()
