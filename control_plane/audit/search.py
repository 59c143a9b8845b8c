"""Reading the audit store: filtered, paginated search (API and CLI) and chain order (verify, export)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.chain import ChainRecord, Checkpoint, Prune, format_time
from control_plane.store.errors import InvalidInputError
from control_plane.store.models import AuditCheckpoint, AuditEvent, AuditPrune
from control_plane.store.paging import decode_cursor, encode_cursor

DECISIONS = ("allow", "deny")


@dataclass(frozen=True)
class Filters:
    identity: str | None = None
    connection: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None
    statement_class: str | None = None
    q: str | None = None
    kind: str | None = None
    session: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.identity:
            query = query.where(
                or_(AuditEvent.identity == self.identity, AuditEvent.username == self.identity)
            )
        if self.connection:
            query = query.where(AuditEvent.connection == self.connection)
        if self.since is not None:
            query = query.where(AuditEvent.time >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.time < self.until)
        if self.decision:
            if self.decision not in DECISIONS:
                raise InvalidInputError(f"decision must be one of {', '.join(DECISIONS)}")
            query = query.where(AuditEvent.decision == self.decision)
        if self.statement_class:
            query = query.where(AuditEvent.statement_class == self.statement_class)
        if self.q:
            # Plain substring search, case-insensitive; LIKE wildcards in the text are literal.
            escaped = self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(AuditEvent.statement.ilike(f"%{escaped}%", escape="\\"))
        if self.kind:
            query = query.where(AuditEvent.kind == self.kind)
        if self.session:
            query = query.where(AuditEvent.session_uuid == self.session)
        return query

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if value is not None:
                out[name] = format_time(value) if isinstance(value, datetime) else value
        return out


def event_out(row: AuditEvent) -> dict[str, Any]:
    """An event as the API and `pgward audit search --json` show it: the hashed body plus its place
    in the chain."""
    body: dict[str, Any] = json.loads(row.body)
    return {
        "id": row.id,
        "stream": str(row.stream),
        "seq": row.seq,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
        **body,
    }


async def search(
    session: AsyncSession, filters: Filters, *, limit: int, cursor: str | None
) -> tuple[list[AuditEvent], str | None]:
    after = decode_cursor(cursor)
    query = filters.apply(select(AuditEvent))
    if after is not None:
        try:
            query = query.where(AuditEvent.id > int(after))
        except ValueError:
            raise InvalidInputError(
                "invalid cursor: pass next_cursor from a previous page unchanged"
            ) from None
    rows = list((await session.execute(query.order_by(AuditEvent.id).limit(limit + 1))).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(str(rows[-1].id))


async def chain_records(
    session: AsyncSession, *, since: datetime | None = None, until: datetime | None = None
) -> AsyncIterator[AuditEvent]:
    query = (
        Filters(since=since, until=until)
        .apply(select(AuditEvent))
        .order_by(AuditEvent.stream, AuditEvent.seq)
    )
    result = await session.stream(query.execution_options(yield_per=2000))
    async for row in result.scalars():
        yield row


def chain_record(row: AuditEvent) -> ChainRecord:
    return ChainRecord(
        stream=str(row.stream),
        seq=row.seq,
        prev_hash=row.prev_hash,
        hash=row.hash,
        body=row.body,
        columns={
            "time": row.time,
            "kind": row.kind,
            "session_uuid": row.session_uuid,
            "identity": row.identity,
            "username": row.username,
            "connection": row.connection,
            "decision": row.decision,
            "statement_class": row.statement_class,
            "statement": row.statement,
            "sqlstate": row.sqlstate,
        },
    )


async def checkpoints(session: AsyncSession) -> list[Checkpoint]:
    rows = (await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id))).scalars()
    return [
        Checkpoint(str(c.stream), c.seq, c.hash, format_time(c.time), c.key_id, c.signature) for c in rows
    ]


async def prunes(session: AsyncSession) -> list[Prune]:
    rows = (await session.execute(select(AuditPrune).order_by(AuditPrune.id))).scalars()
    return [
        Prune(str(p.stream), p.first_seq, p.prev_hash, p.deleted, format_time(p.time), p.key_id, p.signature)
        for p in rows
    ]
