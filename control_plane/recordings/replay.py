"""`pgward replay`: a recording as a psql-like transcript, with its original timing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from control_plane.recordings.messages import messages
from control_plane.recordings.reader import Recording
from control_plane.recordings.transcript import Transcript, wall_clock


def events(path: Path, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
    with Recording.open(path) as rec:
        meta = rec.meta
        yield {"type": "session", "t": 0.0, "started_at": wall_clock(meta), **meta}
        yield from Transcript(max_rows).events(messages(rec.frames()))
        yield {
            "type": "end",
            "complete": rec.trailer is not None,
            "truncated": rec.truncated,
            **(rec.trailer or {}),
        }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value)


def _table(event: dict[str, Any], out: TextIO) -> None:
    names = [c["name"] for c in event["columns"]]
    rows = [[_cell(v) for v in row] for row in event["rows"]]
    widths = [max([len(n), *(len(r[i]) for r in rows if i < len(r))]) for i, n in enumerate(names)]
    out.write(" " + " | ".join(n.center(w) for n, w in zip(names, widths, strict=True)) + "\n")
    out.write("-" + "-+-".join("-" * w for w in widths) + "-\n")
    for r in rows:
        out.write(" " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "\n")
    n = event["row_count"]
    shown = "" if n == len(rows) else f", {len(rows)} shown"
    out.write(f"({n} row{'s' if n != 1 else ''}{shown})\n\n")


def render(event: dict[str, Any], out: TextIO, prompt: str) -> None:
    kind = event["type"]
    if kind == "session":
        out.write(
            f"-- session {event.get('session_uuid')} of {event.get('identity')} on "
            f"{event.get('connection')} from {event.get('client_addr')}, started {event['started_at']}\n"
        )
    elif kind == "statement":
        out.write(f"[{event['t']:10.3f}s] {prompt}=> {event['sql'].strip()}")
        out.write(";\n" if not event["sql"].rstrip().endswith(";") else "\n")
        if "params" in event:
            out.write(f"{'':13}-- parameters: {', '.join(repr(p) for p in event['params'])}\n")
    elif kind == "result":
        _table(event, out)
    elif kind == "command":
        out.write(f"{event['command']}\n")
    elif kind in ("error", "notice"):
        severity = event.get("severity") or event.get("severity_local", kind.upper())
        out.write(f"{severity}:  {event.get('message', '')}  (SQLSTATE {event.get('sqlstate', '?')})\n")
        for field in ("detail", "hint"):
            if field in event:
                out.write(f"{field.upper()}:  {event[field]}\n")
    elif kind == "copy_data":
        out.write(("<< " if event["direction"] == "out" else ">> ") + event["data"])
    elif kind == "notification":
        out.write(f'Asynchronous notification "{event["channel"]}" with payload "{event["payload"]}"\n')
    elif kind == "end":
        out.write(f"-- session ended: {event.get('end_reason', 'recording unfinished')}\n")


def replay(
    path: Path,
    *,
    speed: float = 1.0,
    wait: bool = True,
    as_json: bool = False,
    max_rows: int | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Print the transcript; text output waits between events as the session did (÷ speed)."""
    start = time.monotonic()
    prompt = "pgward"
    for event in events(path, max_rows):
        if event["type"] == "session":
            prompt = str(event.get("connection") or prompt)
        if as_json:
            out.write(json.dumps(event, default=str) + "\n")
            continue
        if wait and speed > 0 and event.get("t"):
            delay = event["t"] / speed - (time.monotonic() - start)
            if delay > 0:
                out.flush()
                time.sleep(delay)
        render(event, out, prompt)
    out.flush()
