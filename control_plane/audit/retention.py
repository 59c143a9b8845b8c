"""Retention: a controlled prune of old audit records.

A prune deletes, per stream, the records older than a cut-off and writes a signed prune record
(`audit_prunes`): from now on the stream's chain starts at `first_seq`, whose previous hash is the
signed `prev_hash`. `pgward audit verify` accepts that start only with a valid signature, so a
prune cannot be used to hide a deletion in the middle of a stream. The trigger on `audit_events`
lets DELETE through only in the prune's own transaction (`SET LOCAL pgward.audit_prune = on`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.chain import format_time, now_iso, parse_time, prune_message
from control_plane.audit.keys import signing_key
from control_plane.config import Settings
from control_plane.store.crypto import SecretBox
from control_plane.store.models import AuditEvent, AuditPrune


@dataclass(frozen=True)
class Pruned:
    stream: str
    first_seq: int
    deleted: int


async def prune(session: AsyncSession, settings: Settings, before: datetime) -> list[Pruned]:
    key = await signing_key(session, SecretBox.from_settings(settings))
    await session.execute(text("SET LOCAL pgward.audit_prune = 'on'"))
    done: list[Pruned] = []
    cuts = (
        await session.execute(
            select(AuditEvent.stream, func.max(AuditEvent.seq), func.count())
            .where(AuditEvent.time < before)
            .group_by(AuditEvent.stream)
        )
    ).all()
    for stream, last_seq, count in cuts:
        last_hash = (
            await session.execute(
                select(AuditEvent.hash).where(AuditEvent.stream == stream, AuditEvent.seq == last_seq)
            )
        ).scalar_one()
        await session.execute(
            delete(AuditEvent).where(AuditEvent.stream == stream, AuditEvent.seq <= last_seq)
        )
        time = now_iso()
        first_seq = last_seq + 1
        session.add(
            AuditPrune(
                stream=uuid.UUID(str(stream)),
                first_seq=first_seq,
                prev_hash=last_hash,
                deleted=count,
                time=parse_time(time),
                key_id=key.id,
                signature=key.sign(prune_message(str(stream), first_seq, last_hash, count, time)),
            )
        )
        done.append(Pruned(str(stream), first_seq, count))
    return done


__all__ = ["Pruned", "format_time", "prune"]
