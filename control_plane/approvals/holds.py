"""Statements held in their session for a review: the waiting side.

The data plane asks `await_review` and waits (only that session). The answer comes when the review is
decided in the store by any pgward process: decisions `pg_notify('pgward_reviews', id)` in their
transaction, every process LISTENs on the store, and a slow poll covers lost notifications (a store
restart, a pooler that drops LISTEN). The statement then runs exactly once (the review is moved from
approved to consumed atomically), or the client gets the reviewer's comment as a 42501.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from sqlalchemy import update
from sqlalchemy.engine import make_url

from control_plane.approvals.service import ApprovalService, after_commit
from control_plane.config import Settings
from control_plane.store.db import SessionMaker, sqlalchemy_url
from control_plane.store.models import Review

log = structlog.get_logger("pgward.approvals")
CHANNEL = "pgward_reviews"
# Held statements wait at most their review's timeout; the data plane waits this much longer for
# the answer that says the review expired.
WAIT_MARGIN = 30.0


def refusal(message: str, detail: str | None = None, hint: str | None = None, **audit: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": "deny", "sqlstate": "42501", "message": message, "cache": "none"}
    if detail:
        out["detail"] = detail
    if hint:
        out["hint"] = hint
    out["audit"] = audit
    return out


class HeldStatements:
    """Waits for decisions on held reviews; one per process."""

    def __init__(self, settings: Settings, sessionmaker: SessionMaker) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self._events: dict[str, asyncio.Event] = {}
        # What to answer once a review is approved (the statement's allow/rewrite/COPY answer).
        self._approved: dict[str, dict[str, Any]] = {}
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.database_url:
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="pgward-holds")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def hold(self, review_id: str, approved_answer: dict[str, Any]) -> None:
        self._approved[review_id] = approved_answer
        self._events.setdefault(review_id, asyncio.Event())

    def wake(self, review_id: str) -> None:
        event = self._events.get(review_id)
        if event is not None:
            event.set()

    async def _listen(self) -> None:
        url = make_url(sqlalchemy_url(self.settings.require_database_url())).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Anything decided while we were not listening: every waiter checks again.
                    for review_id in list(self._events):
                        self.wake(review_id)
                    async for note in conn.notifies():
                        self.wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN on the store failed; held statements fall back to polling", exc_info=True)
                await asyncio.sleep(self.settings.hold_poll_interval)

    async def wait(self, review_id: str) -> dict[str, Any]:
        """The statement's final answer: wait until its review is no longer pending."""
        event = self._events.setdefault(review_id, asyncio.Event())
        try:
            while True:
                event.clear()
                answer = await self._verdict(review_id)
                if answer is not None:
                    return answer
                with contextlib.suppress(TimeoutError):
                    # The poll: a notification lost on the way still releases the statement.
                    await asyncio.wait_for(event.wait(), timeout=self.settings.hold_poll_interval)
        finally:
            self._events.pop(review_id, None)
            self._approved.pop(review_id, None)

    async def _verdict(self, review_id: str) -> dict[str, Any] | None:
        rid = uuid.UUID(review_id)
        now = datetime.now(UTC)
        async with self.sessionmaker() as session:
            review = await session.get(Review, rid)
            if review is None:
                return refusal(f"statement refused: review {review_id} no longer exists", approval=review_id)
            if review.state == "pending" and review.expires_at > now:
                return None
            if review.state == "approved":
                # Exactly once: only the caller that moves it to consumed runs the statement.
                moved = await session.execute(
                    update(Review)
                    .where(Review.id == rid, Review.state == "approved")
                    .values(state="consumed", consumed_at=now)
                    .returning(Review.id)
                )
                if moved.first() is None:
                    await session.rollback()
                    return await self._verdict(review_id)
                service = ApprovalService(
                    session, base_url=self.settings.base_url, default_approvers=self.settings.approver_groups
                )
                await service.note_executed(review)
                await session.commit()
                await after_commit(service.changes)
                answer = dict(self._approved.get(review_id) or {"action": "allow", "cache": "none"})
                answer["audit"] = {**answer.get("audit", {}), "approval": review_id}
                return answer
            comment = f": {review.comment}" if review.comment else ""
            if review.state == "pending" or review.state == "expired":
                return refusal(
                    f"statement refused: review {review_id} was not decided in time",
                    f"review {review_id} expired at {review.expires_at.isoformat()}; "
                    "the statement did not run",
                    "ask an approver, then run the statement again",
                    approval=review_id,
                )
            if review.state == "consumed":
                return refusal(
                    f"statement refused: review {review_id} was already used",
                    "an approved statement runs once",
                    approval=review_id,
                )
            return refusal(
                f"statement refused: review {review_id} was {review.state}{comment}",
                f"review {review_id} was {review.state}"
                + (f" by an approver with the comment: {review.comment}" if review.comment else ""),
                approval=review_id,
            )

    async def withdraw(self, review_id: str) -> None:
        """The client cancelled its held statement: the review is withdrawn (if still pending)."""
        try:
            async with self.sessionmaker() as session:
                service = ApprovalService(
                    session, base_url=self.settings.base_url, default_approvers=self.settings.approver_groups
                )
                await service.withdraw(review_id)
                await session.commit()
            await after_commit(service.changes)
        except Exception:
            log.warning("could not withdraw a review", review=review_id, exc_info=True)
        self.wake(review_id)
