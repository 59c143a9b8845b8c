"""All SQL of the approvals: reviews, access requests, votes, webhooks, deliveries, inbound messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.store.models import (
    AccessRequest,
    ApprovalVote,
    InboundMessage,
    KnownIdentity,
    Review,
    Webhook,
    WebhookDelivery,
)

Item = TypeVar("Item", Review, AccessRequest)


class ApprovalRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: Any) -> None:
        self.session.add(row)
        await self.session.flush()

    # --- reviews and access requests ------------------------------------------------------------------

    async def get(self, model: type[Item], item_id: uuid.UUID, *, for_update: bool = False) -> Item | None:
        stmt = select(model).where(model.id == item_id)
        if for_update:
            # Serialises votes on one item: N-of-M counts and "decided twice" cannot race.
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_visible(
        self,
        model: type[Item],
        *,
        issuer: str,
        subject: str,
        groups: Sequence[str],
        see_all: bool,
        decidable_only: bool,
        state: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[Item]:
        stmt = select(model).order_by(model.created_at, model.id).limit(limit)
        mine = and_(model.requester_issuer == issuer, model.requester_subject == subject)
        approver = model.approver_groups.overlap(list(groups)) if groups else None
        if decidable_only:
            # What the caller may decide: an approver's items other than their own, or their own
            # where the policy allows break-glass.
            cond: Any = and_(model.break_glass_allowed.is_(True), mine)
            if approver is not None:
                cond = or_(and_(approver, ~mine), cond)
            stmt = stmt.where(cond)
        elif not see_all:
            stmt = stmt.where(or_(mine, approver) if approver is not None else mine)
        if state is not None:
            stmt = stmt.where(model.state == state)
        if after is not None:
            stmt = stmt.where(
                or_(model.created_at > after[0], and_(model.created_at == after[0], model.id > after[1]))
            )
        return (await self.session.execute(stmt)).scalars().all()

    async def votes(self, item_id: uuid.UUID) -> Sequence[ApprovalVote]:
        stmt = select(ApprovalVote).where(ApprovalVote.item_id == item_id).order_by(ApprovalVote.created_at)
        return (await self.session.execute(stmt)).scalars().all()

    async def votes_for(self, item_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[ApprovalVote]]:
        out: dict[uuid.UUID, list[ApprovalVote]] = {i: [] for i in item_ids}
        if not item_ids:
            return out
        stmt = (
            select(ApprovalVote)
            .where(ApprovalVote.item_id.in_(list(item_ids)))
            .order_by(ApprovalVote.created_at)
        )
        for vote in (await self.session.execute(stmt)).scalars():
            out[vote.item_id].append(vote)
        return out

    async def find_review(
        self, *, issuer: str, subject: str, connection: str, sql_sha256: str, state: str, now: datetime
    ) -> Review | None:
        """The newest review of exactly this statement by this identity in `state` that is still live."""
        stmt = select(Review).where(
            Review.requester_issuer == issuer,
            Review.requester_subject == subject,
            Review.connection == connection,
            Review.sql_sha256 == sql_sha256,
            Review.state == state,
        )
        if state == "approved":
            stmt = stmt.where(Review.valid_until > now)
        else:
            stmt = stmt.where(Review.expires_at > now)
        stmt = stmt.order_by(Review.created_at.desc()).limit(1).with_for_update(skip_locked=True)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def expire_due(self, model: type[Item], now: datetime) -> Sequence[Item]:
        """Pending items past their decision deadline become expired; returned for the events."""
        stmt = (
            update(model)
            .where(model.state == "pending", model.expires_at <= now)
            .values(state="expired", decided_at=now)
            .returning(model)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def end_used_up(self, now: datetime) -> tuple[Sequence[Review], Sequence[AccessRequest]]:
        """Approved deferred reviews not run in time, and grants past their end, become expired."""
        reviews = (
            (
                await self.session.execute(
                    update(Review)
                    .where(Review.state == "approved", Review.valid_until <= now)
                    .values(state="expired")
                    .returning(Review)
                )
            )
            .scalars()
            .all()
        )
        grants = (
            (
                await self.session.execute(
                    update(AccessRequest)
                    .where(AccessRequest.state == "approved", AccessRequest.ends_at <= now)
                    .values(state="expired")
                    .returning(AccessRequest)
                )
            )
            .scalars()
            .all()
        )
        return reviews, grants

    async def active_grants(self, now: datetime) -> Sequence[AccessRequest]:
        stmt = select(AccessRequest).where(
            AccessRequest.state == "approved", AccessRequest.starts_at <= now, AccessRequest.ends_at > now
        )
        return (await self.session.execute(stmt)).scalars().all()

    # --- webhooks ---------------------------------------------------------------------------------------

    async def webhook_by_name(self, name: str, *, for_update: bool = False) -> Webhook | None:
        stmt = select(Webhook).where(Webhook.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def webhooks(self, after_name: str | None = None, limit: int = 1000) -> Sequence[Webhook]:
        stmt = select(Webhook).order_by(Webhook.name).limit(limit)
        if after_name is not None:
            stmt = stmt.where(Webhook.name > after_name)
        return (await self.session.execute(stmt)).scalars().all()

    async def delete_webhook(self, webhook: Webhook) -> None:
        await self.session.delete(webhook)
        await self.session.flush()

    async def deliveries(
        self, webhook_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> Sequence[WebhookDelivery]:
        stmt = (
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(
                or_(
                    WebhookDelivery.created_at > after[0],
                    and_(WebhookDelivery.created_at == after[0], WebhookDelivery.id > after[1]),
                )
            )
        return (await self.session.execute(stmt)).scalars().all()

    async def delivery(self, delivery_id: uuid.UUID) -> WebhookDelivery | None:
        return await self.session.get(WebhookDelivery, delivery_id)

    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> Sequence[WebhookDelivery]:
        """Deliveries due now, leased to this worker until `lease_until` (other processes skip them)."""
        stmt = (
            select(WebhookDelivery)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self.session.execute(stmt)).scalars().all()
        for row in rows:
            row.next_attempt_at = lease_until
        await self.session.flush()
        return rows

    # --- inbound messages and known identities ---------------------------------------------------------

    async def inbound(self, key: str) -> InboundMessage | None:
        return await self.session.get(InboundMessage, key)

    async def remember_inbound(self, key: str, outcome: dict[str, Any]) -> bool:
        """Record a processed inbound message; False when `key` was already there (a replay)."""
        stmt = insert(InboundMessage).values(key=key, outcome=outcome).on_conflict_do_nothing()
        result = await self.session.execute(stmt)
        return bool(getattr(result, "rowcount", 0))

    async def saw_identity(
        self, *, issuer: str, subject: str, username: str, kind: str, groups: list[str], now: datetime
    ) -> None:
        stmt = insert(KnownIdentity).values(
            issuer=issuer, subject=subject, username=username, kind=kind, groups=groups, seen_at=now
        )
        stmt = stmt.on_conflict_do_update(
            constraint="uq_known_identities_issuer_subject",
            set_={"username": username, "kind": kind, "groups": groups, "seen_at": now},
        )
        await self.session.execute(stmt)

    async def known_by_username(self, username: str) -> Sequence[KnownIdentity]:
        stmt = select(KnownIdentity).where(KnownIdentity.username == username)
        return (await self.session.execute(stmt)).scalars().all()
