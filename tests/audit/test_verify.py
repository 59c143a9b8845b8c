"""`pgward audit verify` finds the first record that was changed, deleted, inserted or reordered
directly in the store (by a superuser who disabled the append-only trigger), and forged
checkpoints; the same holds for an export verified offline with the public key."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from control_plane.audit.chain import record_hash
from tests.audit.conftest import AuditStore

COLUMNS = (
    "stream, seq, time, kind, session_uuid, identity, username, connection, decision, statement_class, "
    "statement, sqlstate, prev_hash, hash, body"
)


def verify(store: AuditStore) -> str:
    r = store.pgward("audit", "verify")
    assert r.returncode == (0 if "verified" in r.stderr else 1), r.stderr
    return r.stderr


def test_untouched_log_verifies(audit_store: AuditStore) -> None:
    audit_store.write(20)
    r = audit_store.pgward("audit", "verify")
    assert r.returncode == 0, r.stderr
    assert "20 records in 1 streams, 1 checkpoints" in r.stderr and "verified" in r.stderr


def test_application_cannot_update_or_delete(audit_store: AuditStore) -> None:
    audit_store.write(3)
    conninfo = audit_store.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in (
            "update audit_events set statement = 'x'",
            "delete from audit_events",
            "truncate audit_events",
            "delete from audit_checkpoints",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


def test_changed_statement_column(audit_store: AuditStore) -> None:
    audit_store.write(10)
    audit_store.sql("update audit_events set statement = 'select 42' where seq = 4")
    out = verify(audit_store)
    assert "record seq 4 was changed" in out and "statement" in out


def test_changed_body_with_its_hash_recomputed(audit_store: AuditStore) -> None:
    stream = audit_store.write(10)
    (prev, body) = audit_store.sql("select prev_hash, body from audit_events where seq = 6")[0]
    forged = body.replace('"select 6"', '"select 600"')
    audit_store.sql(
        "update audit_events set body = %s, statement = 'select 600', hash = %s where seq = 6",
        params=(forged, record_hash(stream, 6, prev, forged)),
    )
    assert "record seq 6 was changed: the next record chained another version of it" in verify(audit_store)


def test_deleted_record(audit_store: AuditStore) -> None:
    audit_store.write(10)
    audit_store.sql("delete from audit_events where seq = 5")
    assert "record seq 5 is missing: deleted" in verify(audit_store)


def test_deleted_record_with_renumbering(audit_store: AuditStore) -> None:
    audit_store.write(10)
    audit_store.sql(
        "delete from audit_events where seq = 5",
        "update audit_events set seq = -(seq - 1) where seq > 5",
        "update audit_events set seq = -seq where seq < 0",
    )
    assert "record seq 5 was deleted" in verify(audit_store)


def test_inserted_record(audit_store: AuditStore) -> None:
    stream = audit_store.write(10)
    # A forger shifts records 5.. up by one and writes a well-chained record at 5.
    (prev,) = audit_store.sql("select hash from audit_events where seq = 4")[0]
    audit_store.sql(
        "update audit_events set seq = -(seq + 1) where seq >= 5",
        "update audit_events set seq = -seq where seq < 0",
    )
    (template,) = audit_store.sql("select body from audit_events where seq = 6")[0]
    body = template.replace('"select 5"', '"drop table evidence"')
    audit_store.sql(
        "insert into audit_events (stream, seq, time, kind, session_uuid, identity, username, connection, "
        "decision, statement_class, statement, sqlstate, prev_hash, hash, body) "
        "select stream, 5, time, kind, session_uuid, identity, username, connection, decision, "
        "statement_class, 'drop table evidence', sqlstate, %s, %s, %s from audit_events where seq = 6",
        params=(prev, record_hash(stream, 5, prev, body), body),
    )
    assert "a record was inserted at seq 5" in verify(audit_store)


def test_duplicate_seq_inserted(audit_store: AuditStore) -> None:
    audit_store.write(6)
    audit_store.sql(
        "alter table audit_events drop constraint uq_audit_events_stream",
        f"insert into audit_events ({COLUMNS}) select {COLUMNS} from audit_events where seq = 3",
    )
    assert "record seq 3 appears twice: a record was inserted" in verify(audit_store)


def test_reordered_records(audit_store: AuditStore) -> None:
    audit_store.write(10)
    audit_store.sql(
        "update audit_events set seq = -1 where seq = 7",
        "update audit_events set seq = 7 where seq = 8",
        "update audit_events set seq = 8 where seq = -1",
    )
    assert "records seq 7 and 8 were reordered (swapped)" in verify(audit_store)


def test_rewritten_tail_is_caught_by_the_signed_checkpoint(audit_store: AuditStore) -> None:
    stream = audit_store.write(8)
    # The forger changes record 3 and recomputes every hash after it: the chain is consistent
    # again, but the signed checkpoint of seq 8 names the old head.
    rows = audit_store.sql("select seq, prev_hash, body from audit_events order by seq")
    prev = None
    updates = []
    for seq, prev_hash, body in rows:
        if seq == 3:
            body = body.replace('"select 3"', '"select 333"')
        if prev is not None and seq >= 3:
            prev_hash = prev
        digest = record_hash(stream, seq, prev_hash, body)
        updates.append((body, prev_hash, digest, seq))
        prev = digest
    for body, prev_hash, digest, seq in updates:
        audit_store.sql(
            "update audit_events set body = %s, prev_hash = %s, hash = %s, "
            "statement = (%s::jsonb)->>'statement' where seq = %s",
            params=(body, prev_hash, digest, body, seq),
        )
    assert "record seq 8 does not match the signed checkpoint" in verify(audit_store)


def test_forged_checkpoint(audit_store: AuditStore) -> None:
    audit_store.write(5)
    audit_store.sql(
        "alter table audit_checkpoints disable trigger audit_checkpoints_append_only",
        "update audit_checkpoints set hash = repeat('a', 64)",
        "alter table audit_checkpoints enable trigger audit_checkpoints_append_only",
    )
    assert "the checkpoint at seq 5" in verify(audit_store) and "invalid signature" in verify(audit_store)


def test_export_verifies_offline_and_detects_tampering(audit_store: AuditStore, tmp_path: Path) -> None:
    audit_store.write(12)
    key = tmp_path / "audit.pub"
    r = audit_store.pgward("audit", "public-key")
    assert r.returncode == 0 and "BEGIN PUBLIC KEY" in r.stdout
    key.write_text(r.stdout)
    export = tmp_path / "audit.jsonl"
    r = audit_store.pgward("audit", "export", "-o", str(export))
    assert r.returncode == 0, r.stderr
    lines = export.read_text().splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    # The 12 records, and the record of this export itself (written before the export ran).
    assert kinds[0] == "header" and kinds.count("record") == 13 and "checkpoint" in kinds
    assert any('"action":"audit.export"' in json.loads(line).get("body", "") for line in lines)

    ok = audit_store.pgward("audit", "verify", "--file", str(export), "--public-key", str(key))
    assert ok.returncode == 0, ok.stderr

    # Change one statement inside the exported file.
    tampered = tmp_path / "tampered.jsonl"
    out = []
    for line in lines:
        obj = json.loads(line)
        if obj["type"] == "record" and obj["seq"] == 9:
            obj["body"] = obj["body"].replace('"select 9"', '"select 99"')
        out.append(json.dumps(obj))
    tampered.write_text("\n".join(out) + "\n")
    bad = audit_store.pgward("audit", "verify", "--file", str(tampered), "--public-key", str(key))
    assert bad.returncode == 1 and "record seq 9 was changed" in bad.stderr

    # A key the auditor does not hold cannot vouch for the checkpoints.
    other = audit_store.__class__(audit_store.url, audit_store.secret_key)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from control_plane.audit.keys import public_pem

    stranger = tmp_path / "stranger.pub"
    stranger.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    forged = other.pgward("audit", "verify", "--file", str(export), "--public-key", str(stranger))
    assert forged.returncode == 1 and "invalid signature" in forged.stderr


def test_prune_starts_a_new_verified_segment(audit_store: AuditStore) -> None:
    audit_store.write(6)
    audit_store.sql("select 1")
    r = audit_store.pgward("audit", "prune", "--before", "2999-01-01T00:00:00+00:00")
    assert r.returncode == 0, r.stderr
    assert "pruned 6 record(s)" in r.stderr
    audit_store.write(4)
    out = audit_store.pgward("audit", "verify")
    assert out.returncode == 0, out.stderr
    # The prune itself is on record (an access record of its own stream).
    rows = audit_store.sql("select body from audit_events where kind = 'access'")
    assert any('"audit.prune"' in body for (body,) in rows)
