"""The approvals' background work in a pgward process: expiring what was not decided in time, ending
grants, and delivering webhooks. Several processes may run it at once (rows are claimed, not shared)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from control_plane.approvals import events
from control_plane.approvals.delivery import DeliveryWorker
from control_plane.approvals.repository import ApprovalRepository
from control_plane.approvals.service import notify_review
from control_plane.audit.writer import current
from control_plane.config import Settings
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker

log = structlog.get_logger("pgward.approvals")


class ApprovalsRuntime:
    def __init__(self, settings: Settings, sessionmaker: SessionMaker) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.worker = DeliveryWorker(settings, sessionmaker, SecretBox.from_settings(settings))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker.start()
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever(), name="pgward-approvals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.worker.stop()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("approvals sweep failed", exc_info=True)
            await asyncio.sleep(self.settings.approvals_sweep_interval)

    async def sweep(self) -> int:
        """Expire undecided items and used-up approvals and grants; returns how many changed."""
        now = datetime.now(UTC)
        base = self.settings.base_url
        queued = 0
        async with self.sessionmaker() as session:
            repository = ApprovalRepository(session)
            from control_plane.store.models import AccessRequest, Review

            reviews = list(await repository.expire_due(Review, now))
            requests = list(await repository.expire_due(AccessRequest, now))
            unused, ended = await repository.end_used_up(now)
            audit: list[dict[str, object]] = []
            for review in reviews:
                # A statement held for it gets its refusal now.
                await notify_review(session, review.id)
            for review in [*reviews, *unused]:
                queued += await events.emit(session, "review.expired", events.review_data(review, base))
                audit.append(
                    {
                        "kind": "approval",
                        "action": "review.expired",
                        "review": str(review.id),
                        "session": review.session_uuid,
                        "statement": review.sql,
                        "connection": review.connection,
                        "decision": "expired",
                    }
                )
            for request in [*requests, *ended]:
                queued += await events.emit(
                    session, "access_request.expired", events.access_request_data(request, base)
                )
                audit.append(
                    {
                        "kind": "approval",
                        "action": "access_request.expired",
                        "access_request": str(request.id),
                        "policy": request.policy,
                        "connection": request.connection,
                        "decision": "expired",
                    }
                )
            await session.commit()
        writer = current()
        if writer is not None and writer.enabled:
            for record in audit:
                writer.append(record)
        changed = len(reviews) + len(requests) + len(unused) + len(ended)
        if changed:
            log.info(
                "approvals expired",
                reviews=len(reviews) + len(unused),
                access_requests=len(requests) + len(ended),
            )
        if queued:
            events.wake_deliveries()
        return changed
