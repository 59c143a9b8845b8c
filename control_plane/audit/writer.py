"""The audit writer: chains records and commits them to the store in batches.

One writer per process, one stream per writer (a UUID per process start). Records come from the
control plane (`append`: session start and end, denied logins, reads of the audit or of
recordings) and from the data plane in batches (`extend_raw`: one record per statement, built in
Rust). The writer assigns each its sequence number and hash in the order received, keeps at most
`audit_buffer_size` uncommitted records, and commits them with COPY. While the store is slow or
down the buffer fills, the writer stops taking records from the data plane, and the data plane's
queue fills until sessions wait: records are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from control_plane.audit.chain import GENESIS, canonical_body, checkpoint_message, format_time, record_hash
from control_plane.config import Settings
from control_plane.store.models import AuditCheckpoint, AuditEvent

if TYPE_CHECKING:
    from control_plane.audit.sink import SyslogSink
    from control_plane.identity.credentials import Identity

log = structlog.get_logger("pgward.audit")

COPY_COLUMNS = (
    "stream",
    "seq",
    "time",
    "kind",
    "session_uuid",
    "identity",
    "username",
    "connection",
    "decision",
    "statement_class",
    "statement",
    "sqlstate",
    "prev_hash",
    "hash",
    "body",
)
_COPY = f"COPY audit_events ({', '.join(COPY_COLUMNS)}) FROM STDIN"


@dataclass
class _Row:
    values: tuple[Any, ...]
    ack: int  # data plane waiter to release once committed (strict mode); 0: none


def identity_fields(identity: Identity) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "subject": identity.subject,
        "username": identity.username,
        "groups": list(identity.groups),
        "issuer": identity.issuer,
        "kind": identity.kind,
        "credential": identity.credential,
    }
    if identity.acting_for is not None:
        fields["acting_for"] = identity_fields(identity.acting_for)
    return fields


def now_text() -> str:
    return format_time(datetime.now(UTC))


class AuditWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine, *, sink: SyslogSink | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self.enabled = settings.audit_mode != "off"
        self.strict = settings.audit_mode == "strict"
        self.stream = str(uuid.uuid4())
        self.seq = 0
        self.head = GENESIS
        self.committed_seq = 0
        self.committed_hash = GENESIS
        self._pending: list[_Row] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        # A write failed: the next one first asks the store what it already has.
        self._uncertain = False
        self._closing = False
        self._stream_written = False
        self._checkpointed_seq = 0
        self._last_checkpoint = 0.0
        self.sink = sink
        # Called after every commit: the data plane pump takes more records (room freed), strict
        # waiters in the data plane are released (`acks`).
        self.on_room: list[Callable[[], None]] = []
        self.on_acks: list[Callable[[list[int]], None]] = []
        self.failures = 0

    # --- life ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._last_checkpoint = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._run(), name="pgward-audit-writer")
            global _current
            _current = self

    async def close(self) -> None:
        """Commit what is buffered, sign a last checkpoint, stop."""
        global _current
        if _current is self:
            _current = None
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
                except TimeoutError:
                    log.error(
                        "audit records could not be committed before shutdown", pending=len(self._pending)
                    )
                    self._task.cancel()
        if self.committed_seq > self._checkpointed_seq:
            with contextlib.suppress(Exception):
                await self.checkpoint()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self.sink is not None:
            await self.sink.close()

    # --- appending -----------------------------------------------------------------------------------

    def room(self) -> int:
        return max(0, self.settings.audit_buffer_size - len(self._pending))

    def append(self, fields: Mapping[str, Any]) -> int:
        """Chain one record the control plane writes; returns its seq (see `durable`)."""
        if not self.enabled:
            return 0
        time = now_text()
        body = canonical_body({"time": time, **fields})
        identity = fields.get("identity") or {}
        row = (
            time,
            fields["kind"],
            fields.get("session"),
            identity.get("subject"),
            identity.get("username"),
            fields.get("connection"),
            fields.get("decision"),
            fields.get("class"),
            fields.get("statement"),
            fields.get("sqlstate"),
        )
        return self._chain(row, body, 0)

    def extend_raw(self, events: Sequence[tuple[Any, ...]]) -> None:
        """Records from the data plane: `(ack, time, kind, session, identity, username, connection,
        decision, class, statement, sqlstate, body)`."""
        for event in events:
            self._chain(event[1:11], event[11], event[0])

    def _chain(self, columns: tuple[Any, ...], body: str, ack: int) -> int:
        self.seq += 1
        digest = record_hash(self.stream, self.seq, self.head, body)
        self._pending.append(_Row((self.stream, self.seq, *columns, self.head, digest, body), ack))
        self.head = digest
        self._wake.set()
        return self.seq

    async def durable(self, seq: int) -> None:
        """Wait until record `seq` is committed."""
        if seq <= self.committed_seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        await future

    async def flush(self) -> None:
        await self.durable(self.seq)

    # --- committing ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.audit_checkpoint_interval)
                except TimeoutError:
                    pass
            elif not self.strict and not self._closing and self.settings.audit_flush_interval > 0:
                # Gather a batch: one commit per interval rather than one per record.
                if len(self._pending) < self.settings.audit_buffer_size // 2:
                    await asyncio.sleep(self.settings.audit_flush_interval)
            if self._pending:
                batch = self._pending[:5000]
                try:
                    if self._uncertain:
                        # A failed attempt may have committed after all (the connection broke after
                        # COMMIT was sent): what the store already has must not be written twice.
                        stored = await self._stored_seq()
                        self._uncertain = False
                        done = [r for r in batch if r.values[1] <= stored]
                        if done:
                            self._committed(done)
                            continue
                    await self._write(batch)
                except Exception as e:
                    self.failures += 1
                    self._uncertain = True
                    log.error(
                        "audit records could not be committed; retrying",
                        error=str(e),
                        pending=len(self._pending),
                    )
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self.failures, 6)))
                    continue
                self.failures = 0
                self._committed(batch)
            if loop.time() - self._last_checkpoint >= self.settings.audit_checkpoint_interval:
                self._last_checkpoint = loop.time()
                if self.committed_seq > self._checkpointed_seq:
                    try:
                        await self.checkpoint()
                    except Exception as e:
                        log.error("audit checkpoint failed", error=str(e))

    def _committed(self, batch: list[_Row]) -> None:
        """`batch` (the oldest pending records) is in the store."""
        del self._pending[: len(batch)]
        last = batch[-1].values
        self.committed_seq, self.committed_hash = last[1], last[13]
        self._release()
        acks = [r.ack for r in batch if r.ack]
        if acks:
            for callback in self.on_acks:
                callback(acks)
        if self.sink is not None:
            self.sink.send([r.values for r in batch])
        for room_callback in self.on_room:
            room_callback()

    async def _stored_seq(self) -> int:
        """The highest seq of this stream the store holds."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            assert pg is not None
            async with pg.cursor() as cur:
                await cur.execute(
                    "SELECT coalesce(max(seq), 0) FROM audit_events WHERE stream = %s", (self.stream,)
                )
                row = await cur.fetchone()
            await pg.rollback()
        return int(row[0]) if row else 0

    def _release(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for seq, future in self._waiters:
            if seq <= self.committed_seq:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((seq, future))
        self._waiters = still

    async def _write(self, batch: list[_Row]) -> None:
        # One connection held for the writer's life: no pool checkout (and pre-ping) per batch.
        if self._conn is None:
            self._conn = await self.engine.connect()
        conn = self._conn
        try:
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            assert pg is not None
            async with pg.cursor() as cur:
                if not self._stream_written:
                    await cur.execute(
                        "INSERT INTO audit_streams (id, host, pid) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (self.stream, socket.gethostname(), os.getpid()),
                    )
                async with cur.copy(_COPY) as copy:
                    for row in batch:
                        await copy.write_row(row.values)
            await pg.commit()
        except BaseException:
            # The connection may be broken or mid-transaction: start over with a fresh one.
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._stream_written = True

    async def checkpoint(self) -> AuditCheckpoint | None:
        """Sign the committed head of this writer's stream."""
        if self.committed_seq == 0:
            return None
        seq, digest = self.committed_seq, self.committed_hash
        async with self.sessionmaker() as session:
            checkpoint = await sign_checkpoint(session, self.settings, self.stream, seq, digest)
            await session.commit()
        self._checkpointed_seq = seq
        return checkpoint


async def sign_checkpoint(
    session: Any, settings: Settings, stream: str, seq: int, digest: str
) -> AuditCheckpoint:
    from control_plane.audit.keys import signing_key
    from control_plane.store.crypto import SecretBox

    key = await signing_key(session, SecretBox.from_settings(settings))
    time = now_text()
    checkpoint = AuditCheckpoint(
        stream=uuid.UUID(stream),
        seq=seq,
        hash=digest,
        time=datetime.fromisoformat(time.replace("Z", "+00:00")),
        key_id=key.id,
        signature=key.sign(checkpoint_message(stream, seq, digest, time)),
    )
    session.add(checkpoint)
    return checkpoint


async def checkpoint_streams(sessionmaker: Any, settings: Settings) -> list[AuditCheckpoint]:
    """Sign the current head of every stream in the store (on demand: `pgward audit checkpoint`)."""
    from sqlalchemy import func

    made: list[AuditCheckpoint] = []
    async with sessionmaker() as session:
        heads = (
            await session.execute(
                select(AuditEvent.stream, func.max(AuditEvent.seq)).group_by(AuditEvent.stream)
            )
        ).all()
        for stream, seq in heads:
            digest = (
                await session.execute(
                    select(AuditEvent.hash).where(AuditEvent.stream == stream, AuditEvent.seq == seq)
                )
            ).scalar_one()
            made.append(await sign_checkpoint(session, settings, str(stream), seq, digest))
        await session.commit()
    return made


# --- the process's writer, for callers outside the proxy (the API) ------------------------------------

_current: AuditWriter | None = None


def current() -> AuditWriter | None:
    return _current


async def record_access(
    action: str,
    *,
    actor: Identity | None,
    resource: str,
    detail: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    engine: AsyncEngine | None = None,
) -> None:
    """Audit a read of audit data or of a session recording, and wait until it is committed.

    `action` names what was done (`audit.export`, `audit.search`, `recording.read`, …), `resource`
    what was read (a session UUID, a filter). Uses the process's running writer; without one
    (a CLI command) `settings` and `engine` give a short-lived writer with its own stream."""
    fields: dict[str, Any] = {"kind": "access", "action": action, "resource": resource}
    if actor is not None:
        fields["identity"] = identity_fields(actor)
    if detail:
        fields["detail"] = dict(detail)
    writer = _current
    if writer is not None:
        if writer.enabled:
            await writer.durable(writer.append(fields))
        return
    if settings is None or engine is None:
        raise RuntimeError("record_access needs a running audit writer, or settings and an engine")
    if settings.audit_mode == "off":
        return
    once = AuditWriter(settings, engine)
    await once.start()
    try:
        await once.durable(once.append(fields))
    finally:
        await once.close()


__all__ = ["AuditWriter", "checkpoint_streams", "current", "identity_fields", "record_access"]
