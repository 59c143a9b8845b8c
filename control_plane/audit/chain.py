"""The hash chain: how a record is hashed, how checkpoints are signed, and how a chain is verified.

Everything an auditor needs to re-implement verification is here and in docs/audit.md:

- A record is `(stream, seq, prev_hash, hash, body)`. `body` is UTF-8 JSON text; its exact bytes
  are hashed, so verification never re-serialises anything.
- `hash = SHA-256("pgward-audit-v1\\n" + stream + "\\n" + seq + "\\n" + prev_hash + "\\n" + body)`,
  lower-case hex; `stream` is the stream's UUID in canonical form and `seq` a decimal integer.
- Records of a stream are numbered 1, 2, 3…; the first has `prev_hash` = 64 zeros (or, after a
  retention prune, the signed `prev_hash` of the prune).
- A checkpoint signs `"pgward-audit-checkpoint-v1\\n" + stream + "\\n" + seq + "\\n" + hash + "\\n"
  + time` with Ed25519; a prune signs `"pgward-audit-prune-v1\\n" + stream + "\\n" + first_seq +
  "\\n" + prev_hash + "\\n" + deleted + "\\n" + time`. `time` is RFC 3339 UTC with microseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
RECORD_DOMAIN = b"pgward-audit-v1"
CHECKPOINT_DOMAIN = "pgward-audit-checkpoint-v1"
PRUNE_DOMAIN = "pgward-audit-prune-v1"


def record_hash(stream: str, seq: int, prev_hash: str, body: str) -> str:
    h = hashlib.sha256(RECORD_DOMAIN)
    h.update(f"\n{stream}\n{seq}\n{prev_hash}\n".encode())
    h.update(body.encode())
    return h.hexdigest()


def canonical_body(fields: Mapping[str, Any]) -> str:
    """The body the control plane writes (the data plane writes the same shape): sorted keys,
    no whitespace. Only ever hashed as stored, so other writers may differ in layout."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def checkpoint_message(stream: str, seq: int, hash_: str, time: str) -> bytes:
    return f"{CHECKPOINT_DOMAIN}\n{stream}\n{seq}\n{hash_}\n{time}".encode()


def prune_message(stream: str, first_seq: int, prev_hash: str, deleted: int, time: str) -> bytes:
    return f"{PRUNE_DOMAIN}\n{stream}\n{first_seq}\n{prev_hash}\n{deleted}\n{time}".encode()


def columns_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The searchable columns a record's body implies (the store keeps them next to the body)."""
    identity = body.get("identity") or {}
    return {
        "time": parse_time(body["time"]),
        "kind": body["kind"],
        "session_uuid": body.get("session"),
        "identity": identity.get("subject"),
        "username": identity.get("username"),
        "connection": body.get("connection"),
        "decision": body.get("decision"),
        "statement_class": body.get("class"),
        "statement": body.get("statement"),
        "sqlstate": body.get("sqlstate"),
    }


@dataclass(frozen=True)
class ChainRecord:
    stream: str
    seq: int
    prev_hash: str
    hash: str
    body: str
    # The searchable columns as stored (None when verifying an export, which has only the body).
    columns: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    stream: str
    seq: int
    hash: str
    time: str
    key_id: str
    signature: str  # base64


@dataclass(frozen=True)
class Prune:
    stream: str
    first_seq: int
    prev_hash: str
    deleted: int
    time: str
    key_id: str
    signature: str


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0
    streams: int = 0
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class Verifier:
    """Checks streams of records against their chain and the signed checkpoints and prunes.

    `keys` maps a key id to an Ed25519 public key (cryptography object) — the store's keys, or the
    public key an auditor was given, for an export."""

    def __init__(self, keys: Mapping[str, Any]) -> None:
        self.keys = keys

    def _signature_ok(self, key_id: str, signature: str, message: bytes) -> bool:
        import base64

        from cryptography.exceptions import InvalidSignature

        key = self.keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify(
        self,
        records: Iterable[ChainRecord],
        checkpoints: Sequence[Checkpoint],
        prunes: Sequence[Prune],
        *,
        partial: bool = False,
    ) -> Report:
        """`partial`: the records are an excerpt (an export with --since/--until), so a stream may
        start after seq 1 without a prune; its first record's prev_hash is then taken as given."""
        report = Report()
        by_stream: dict[str, list[ChainRecord]] = {}
        for r in records:
            by_stream.setdefault(r.stream, []).append(r)
        valid_prunes: dict[str, Prune] = {}
        for p in prunes:
            message = prune_message(p.stream, p.first_seq, p.prev_hash, p.deleted, p.time)
            if not self._signature_ok(p.key_id, p.signature, message):
                report.problems.append(
                    f"stream {p.stream}: the prune record starting at seq {p.first_seq} has an invalid "
                    f"signature (key {p.key_id})"
                )
                continue
            current = valid_prunes.get(p.stream)
            if current is None or p.first_seq > current.first_seq:
                valid_prunes[p.stream] = p
        heads: dict[str, dict[int, str]] = {}
        for stream, rows in sorted(by_stream.items()):
            rows.sort(key=lambda r: r.seq)
            report.streams += 1
            report.records += len(rows)
            hashes = self._verify_stream(stream, rows, valid_prunes.get(stream), partial, report)
            heads[stream] = hashes
        for c in checkpoints:
            report.checkpoints += 1
            message = checkpoint_message(c.stream, c.seq, c.hash, c.time)
            if not self._signature_ok(c.key_id, c.signature, message):
                report.problems.append(
                    f"stream {c.stream}: the checkpoint at seq {c.seq} ({c.time}) has an invalid signature "
                    f"(key {c.key_id}): it was forged or altered"
                )
                continue
            stored = heads.get(c.stream, {}).get(c.seq)
            pruned = c.stream in valid_prunes and c.seq < valid_prunes[c.stream].first_seq
            if stored is None:
                if not pruned and not partial:
                    report.problems.append(
                        f"stream {c.stream}: record seq {c.seq} named by a signed checkpoint is missing "
                        "(deleted)"
                    )
            elif stored != c.hash:
                report.problems.append(
                    f"stream {c.stream}: record seq {c.seq} does not match the signed checkpoint of {c.time} "
                    "(the chain up to it was rewritten)"
                )
        for stream, hashes in heads.items():
            signed = [c.seq for c in checkpoints if c.stream == stream]
            last = max(hashes, default=0)
            if last and (not signed or max(signed) < last):
                after = max(signed, default=0)
                report.notes.append(
                    f"stream {stream}: records after seq {after} (up to {last}) are not covered by a "
                    "signed checkpoint yet"
                )
        return report

    def _verify_stream(
        self,
        stream: str,
        rows: list[ChainRecord],
        prune: Prune | None,
        partial: bool,
        report: Report,
    ) -> dict[int, str]:
        hashes = {r.seq: r.hash for r in rows}
        seq_of_hash = {r.hash: r.seq for r in rows}
        if prune is not None:
            expected, prev = prune.first_seq, prune.prev_hash
        elif partial and rows:
            expected, prev = rows[0].seq, rows[0].prev_hash
            if expected > 1:
                report.notes.append(f"stream {stream}: this export starts at seq {expected}")
        else:
            expected, prev = 1, GENESIS

        def problem(text: str) -> dict[int, str]:
            report.problems.append(f"stream {stream}: {text}")
            return hashes

        for i, r in enumerate(rows):
            if r.seq < expected:
                return problem(f"record seq {r.seq} appears twice: a record was inserted")
            if r.seq > expected:
                missing = f"{expected}" if r.seq == expected + 1 else f"{expected}..{r.seq - 1}"
                return problem(f"record seq {missing} is missing: deleted")
            if record_hash(stream, r.seq, r.prev_hash, r.body) != r.hash:
                moved = self._moved_to(r, seq_of_hash)
                if moved == r.seq - 1:
                    return problem(
                        f"a record was inserted at seq {r.seq - 1} (the records from seq {r.seq} on were "
                        "renumbered)"
                    )
                if moved == r.seq + 1:
                    following = rows[i + 1] if i + 1 < len(rows) else None
                    if following is not None and self._moved_to(following, seq_of_hash) == following.seq - 1:
                        return problem(f"records seq {r.seq} and {r.seq + 1} were reordered (swapped)")
                    return problem(
                        f"record seq {r.seq} was deleted (the records after it were renumbered to hide it)"
                    )
                if moved is not None:
                    return problem(f"record seq {r.seq} was reordered: it was written as seq {moved}")
                return problem(f"record seq {r.seq} was changed: its contents no longer match its hash")
            if r.prev_hash != prev:
                if i > 0:
                    return problem(
                        f"record seq {r.seq - 1} was changed: the next record chained another version of it"
                    )
                return problem(f"record seq {r.seq} does not continue the chain (previous hash differs)")
            if r.columns is not None:
                changed = _column_mismatch(r)
                if changed:
                    return problem(
                        f"record seq {r.seq} was changed: column {changed} differs from the hashed body"
                    )
            prev = r.hash
            expected = r.seq + 1
        return hashes

    @staticmethod
    def _moved_to(r: ChainRecord, seq_of_hash: Mapping[str, int]) -> int | None:
        """The seq a record was written with, when its hash is intact but its seq was changed."""
        before = seq_of_hash.get(r.prev_hash)
        candidates = [before + 1] if before is not None else []
        candidates += [r.seq - 1, r.seq + 1]
        for seq in candidates:
            if seq != r.seq and record_hash(r.stream, seq, r.prev_hash, r.body) == r.hash:
                return seq
        return None


def _column_mismatch(r: ChainRecord) -> str | None:
    assert r.columns is not None
    try:
        implied = columns_of(json.loads(r.body))
    except (ValueError, KeyError, TypeError):
        return "body"
    for name, value in implied.items():
        if r.columns.get(name) != value:
            return name
    return None


def now_iso() -> str:
    return format_time(datetime.now(UTC))
