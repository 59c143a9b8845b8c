"""`pgward audit export` (JSON Lines) and `pgward audit verify` on the store or on an export file.

Export lines, in order: one `header`, every `record` (by stream, then seq), every `checkpoint`
and `prune`. A record line carries the body exactly as hashed (a JSON string), so verification of
an export needs nothing but the file and the deployment's public key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import search as store
from control_plane.audit.chain import ChainRecord, Checkpoint, Prune, Report, Verifier, now_iso
from control_plane.audit.keys import load_public_pem, public_keys, public_pem

FORMAT = "pgward-audit"
VERSION = 1


async def export_lines(
    session: AsyncSession, *, since: datetime | None = None, until: datetime | None = None
) -> AsyncIterator[str]:
    keys = await public_keys(session)
    filters: dict[str, str] = {}
    if since is not None:
        filters["since"] = since.isoformat()
    if until is not None:
        filters["until"] = until.isoformat()
    yield _line(
        {
            "type": "header",
            "format": FORMAT,
            "version": VERSION,
            "exported_at": now_iso(),
            "filters": filters,
            "public_keys": {k: public_pem(v) for k, v in keys.items()},
        }
    )
    streams: set[str] = set()
    async for row in store.chain_records(session, since=since, until=until):
        streams.add(str(row.stream))
        yield _line(
            {
                "type": "record",
                "stream": str(row.stream),
                "seq": row.seq,
                "prev_hash": row.prev_hash,
                "hash": row.hash,
                "body": row.body,
            }
        )
    for c in await store.checkpoints(session):
        if c.stream in streams:
            yield _line({"type": "checkpoint", **c.__dict__})
    for p in await store.prunes(session):
        if p.stream in streams:
            yield _line({"type": "prune", **p.__dict__})


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


async def verify_store(session: AsyncSession) -> Report:
    keys = await public_keys(session)
    records = [store.chain_record(row) async for row in store.chain_records(session)]
    return Verifier(keys).verify(records, await store.checkpoints(session), await store.prunes(session))


def verify_file(lines: Iterable[str], public_key_files: Iterable[Path]) -> Report:
    """Verify an export against public keys the auditor holds (never the keys the file carries)."""
    from control_plane.audit.keys import key_id

    keys = {}
    for path in public_key_files:
        key = load_public_pem(path.read_bytes())
        keys[key_id(key)] = key
    records: list[ChainRecord] = []
    checkpoints: list[Checkpoint] = []
    prunes: list[Prune] = []
    header: dict[str, Any] | None = None
    report_notes: list[str] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            kind = obj.pop("type")
            if kind == "header":
                header = obj
            elif kind == "record":
                records.append(ChainRecord(**obj))
            elif kind == "checkpoint":
                checkpoints.append(Checkpoint(**obj))
            elif kind == "prune":
                prunes.append(Prune(**obj))
            else:
                report_notes.append(f"line {number}: unknown line type {kind!r} ignored")
        except (ValueError, TypeError, KeyError) as e:
            report = Report()
            report.problems.append(f"line {number} is not a valid export line: {e}")
            return report
    if header is None or header.get("format") != FORMAT:
        report = Report()
        report.problems.append("the file is not a pgward audit export (no header line)")
        return report
    partial = bool(header.get("filters"))
    report = Verifier(keys).verify(records, checkpoints, prunes, partial=partial)
    if not keys:
        report.problems.append("no public key given (--public-key): checkpoint signatures cannot be checked")
    report.notes.extend(report_notes)
    return report
