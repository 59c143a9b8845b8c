"""Reviews and access requests: creating, finding, deciding. Services never commit; callers do, then
call `after_commit` so deliveries start and gateways reload grants."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.approvals import events
from control_plane.approvals.repository import ApprovalRepository, Item
from control_plane.approvals.voting import Outcome, Vote, cast
from control_plane.identity.credentials import Identity
from control_plane.policy.documents import Approval, PolicyDocument, duration_seconds
from control_plane.store.errors import InvalidInputError, NotFoundError, RefusedError
from control_plane.store.models import AccessRequest, ApprovalVote, Review, WebhookDelivery
from control_plane.store.repositories import PolicyRepository

LABELS = {Review: "review", AccessRequest: "access request"}


def sql_digest(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def encode_after(item: Review | AccessRequest | WebhookDelivery) -> str:
    raw = f"{item.created_at.isoformat()}|{item.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_after(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInputError("invalid cursor: pass next_cursor from a previous page unchanged") from None


def parse_id(value: str, label: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFoundError(f"{label} {value} does not exist") from None


@dataclass
class Changes:
    """What a service call changed that matters after the commit."""

    deliveries: int = 0
    grants_changed: bool = False
    decided: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    # Audit records (kind "approval") written once the change is committed.
    audit: list[dict[str, Any]] = field(default_factory=list)


def approver_groups(configured: Sequence[str], default: Sequence[str]) -> list[str]:
    return list(configured) if configured else list(default)


class ApprovalService:
    def __init__(self, session: AsyncSession, *, base_url: str, default_approvers: Sequence[str]) -> None:
        self.session = session
        self.repository = ApprovalRepository(session)
        self.base_url = base_url
        self.default_approvers = list(default_approvers)
        self.changes = Changes()

    # --- events -----------------------------------------------------------------------------------------

    async def _emit(self, event: str, item: Review | AccessRequest, actor: Identity | None = None) -> None:
        data = (
            events.review_data(item, self.base_url)
            if isinstance(item, Review)
            else events.access_request_data(item, self.base_url)
        )
        self.changes.deliveries += await events.emit(self.session, event, data)
        self._audit(event, item, actor)

    def _audit(self, action: str, item: Review | AccessRequest, actor: Identity | None, **extra: Any) -> None:
        record: dict[str, Any] = {
            "kind": "approval",
            "action": action,
            "connection": item.connection,
            "decision": item.state,
            "requester": {"subject": item.requester_subject, "username": item.requester_username},
            "break_glass": item.break_glass,
            **extra,
        }
        if actor is not None:
            from control_plane.audit.writer import identity_fields

            record["identity"] = identity_fields(actor)
        if isinstance(item, Review):
            # Linked to the session and statement the review is about.
            record.update(review=str(item.id), session=item.session_uuid, statement=item.sql)
        else:
            record.update(access_request=str(item.id), policy=item.policy)
        self.changes.audit.append(record)

    # --- statement reviews (the gateway) ----------------------------------------------------------------

    async def note_executed(self, review: Review) -> None:
        """A held statement's approved review was used: the statement runs now."""
        await self._emit("review.executed", review)

    async def withdraw(self, review_id: str) -> None:
        review = await self.repository.get(Review, parse_id(review_id, "review"), for_update=True)
        if review is None or review.state != "pending":
            return
        review.state, review.decided_at = "withdrawn", datetime.now(UTC)
        review.comment = "withdrawn: the client cancelled the held statement"
        await self._emit("review.decided", review)
        await notify_review(self.session, review.id)

    async def use_approved(self, identity: Identity, connection: str, sql: str) -> Review | None:
        """An approved, unused review of exactly `sql` by `identity`: marked consumed and returned."""
        now = datetime.now(UTC)
        review = await self.repository.find_review(
            issuer=identity.issuer,
            subject=identity.subject,
            connection=connection,
            sql_sha256=sql_digest(sql),
            state="approved",
            now=now,
        )
        if review is None or review.sql != sql:
            return None
        review.state, review.consumed_at = "consumed", now
        await self._emit("review.executed", review, identity)
        return review

    async def pending_review(self, identity: Identity, connection: str, sql: str) -> Review | None:
        review = await self.repository.find_review(
            issuer=identity.issuer,
            subject=identity.subject,
            connection=connection,
            sql_sha256=sql_digest(sql),
            state="pending",
            now=datetime.now(UTC),
        )
        return review if review is not None and review.sql == sql else None

    async def open_review(
        self,
        identity: Identity,
        *,
        connection: str,
        session_uuid: str | None,
        sql: str,
        what: str,
        reason: str | None,
        policy: str,
        rule: str,
        approval: Approval,
        mode: str,
    ) -> Review:
        now = datetime.now(UTC)
        review = Review(
            id=uuid.uuid4(),
            state="pending",
            mode=mode,
            requester_issuer=identity.issuer,
            requester_subject=identity.subject,
            requester_username=identity.username,
            requester_kind=identity.kind,
            requester_groups=list(identity.groups),
            connection=connection,
            session_uuid=session_uuid,
            sql=sql,
            sql_sha256=sql_digest(sql),
            what=what[:1000],
            reason=reason,
            policy=policy,
            rule=rule,
            approver_groups=approver_groups(approval.approvers, self.default_approvers),
            approvals_required=approval.approvals_required,
            break_glass_allowed=approval.break_glass,
            valid_for_seconds=duration_seconds(approval.valid_for),
            created_at=now,
            expires_at=now + timedelta(seconds=duration_seconds(approval.timeout)),
        )
        await self.repository.add(review)
        await self._emit("review.created", review, identity)
        return review

    # --- access requests --------------------------------------------------------------------------------

    async def request_access(
        self, identity: Identity, *, connection: str, policy: str, duration: str, reason: str | None
    ) -> AccessRequest:
        row = await PolicyRepository(self.session).get_by_name(policy)
        if row is None:
            raise NotFoundError(f'policy "{policy}" does not exist')
        doc = PolicyDocument.model_validate(row.document)
        rules = doc.access_requests
        if rules is None:
            raise RefusedError(
                f'policy "{policy}" cannot be requested (it has no access_requests section)',
                status=403,
                slug="not-requestable",
            )
        if not doc.applies_to_connection(connection):
            raise InvalidInputError(f'policy "{policy}" does not cover connection "{connection}"')
        r = rules.requesters
        allowed = bool(set(r.groups) & set(identity.groups)) or (
            identity.username in (r.service_identities if identity.kind == "service" else r.users)
        )
        if not allowed:
            raise RefusedError(
                f'"{identity.username}" may not request policy "{policy}": its requesters are '
                f"{_subjects(r.groups, r.users, r.service_identities)}",
                status=403,
                slug="not-a-requester",
            )
        try:
            seconds = duration_seconds(duration)
        except (ValueError, KeyError, IndexError):
            raise InvalidInputError(
                f"duration {duration!r} is not a duration such as 30m, 8h or 1d"
            ) from None
        if seconds > duration_seconds(rules.max_duration):
            raise InvalidInputError(
                f'policy "{policy}" may be requested for at most {rules.max_duration} (asked: {duration})'
            )
        reason = (reason or "").strip() or None
        if rules.reason_required and reason is None:
            raise RefusedError(
                f'policy "{policy}" requires a reason for access requests', status=400, slug="reason-required"
            )
        now = datetime.now(UTC)
        request = AccessRequest(
            id=uuid.uuid4(),
            state="pending",
            requester_issuer=identity.issuer,
            requester_subject=identity.subject,
            requester_username=identity.username,
            requester_kind=identity.kind,
            requester_groups=list(identity.groups),
            connection=connection,
            policy=policy,
            duration_seconds=seconds,
            reason=reason,
            approver_groups=approver_groups(rules.approvers, self.default_approvers),
            approvals_required=rules.approvals_required,
            break_glass_allowed=rules.break_glass,
            created_at=now,
            expires_at=now + timedelta(seconds=duration_seconds(rules.timeout)),
        )
        await self.repository.add(request)
        await self._emit("access_request.created", request, identity)
        return request

    # --- reading and deciding (API, CLI, chat) -----------------------------------------------------------

    async def get(self, model: type[Item], item_id: str) -> Item:
        label = LABELS[model]
        item = await self.repository.get(model, parse_id(item_id, label))
        if item is None:
            raise NotFoundError(f"{label} {item_id} does not exist")
        return item

    async def votes(self, item_id: uuid.UUID) -> Sequence[ApprovalVote]:
        return await self.repository.votes(item_id)

    async def decide(
        self,
        model: type[Item],
        item_id: str,
        voter: Identity,
        vote: Vote,
        comment: str | None,
        *,
        break_glass: bool = False,
        via: str = "api",
    ) -> tuple[Item, Outcome]:
        label = LABELS[model]
        item = await self.repository.get(model, parse_id(item_id, label), for_update=True)
        if item is None:
            raise NotFoundError(f"{label} {item_id} does not exist")
        now = datetime.now(UTC)
        outcome = await cast(
            self.repository, item, label, voter, vote, comment, now=now, break_glass=break_glass, via=via
        )
        self._audit(
            f"{'review' if isinstance(item, Review) else 'access_request'}.vote",
            item,
            voter,
            vote=vote,
            comment=comment,
            via=via,
            break_glass=break_glass,
        )
        if outcome.decided:
            kind = "review" if isinstance(item, Review) else "access_request"
            if isinstance(item, Review):
                if item.state == "approved":
                    item.valid_until = now + timedelta(seconds=item.valid_for_seconds)
                # A statement held for it (on any gateway process) is released now.
                await notify_review(self.session, item.id)
            if isinstance(item, AccessRequest) and item.state == "approved":
                item.starts_at, item.ends_at = now, now + timedelta(seconds=item.duration_seconds)
                # Every gateway reloads its policies (and with them the grants) on a new revision.
                await PolicyRepository(self.session).bump_revision()
                self.changes.grants_changed = True
            self.changes.decided.append((kind, item.id))
            await self._emit(f"{kind}.decided", item, voter)
            if outcome.break_glass:
                await self._emit("break_glass.used", item, voter)
        await self.session.flush()
        return item, outcome


async def notify_review(session: AsyncSession, review_id: uuid.UUID) -> None:
    """Tell every process (LISTEN pgward_reviews) that a review changed; sent on commit."""
    await session.execute(text("SELECT pg_notify('pgward_reviews', :id)"), {"id": str(review_id)})


def _subjects(groups: Sequence[str], users: Sequence[str], services: Sequence[str]) -> str:
    parts = [f"groups {', '.join(groups)}"] if groups else []
    if users:
        parts.append(f"users {', '.join(users)}")
    if services:
        parts.append(f"service identities {', '.join(services)}")
    return "; ".join(parts) or "nobody"


async def after_commit(changes: Changes) -> None:
    """Start deliveries now and make this process's gateways pick up changed grants before answering."""
    if changes.audit:
        from control_plane.audit.writer import current

        writer = current()
        if writer is not None and writer.enabled:
            last = 0
            for record in changes.audit:
                last = writer.append(record)
            # The API answers only once the decision is in the audit log.
            await writer.durable(last)
    if changes.deliveries:
        events.wake_deliveries()
    if changes.grants_changed:
        from control_plane.policy.runtime import policy_changed

        await policy_changed.notify()


def votes_out(votes: Sequence[ApprovalVote]) -> list[dict[str, Any]]:
    return [
        {
            "voter": v.voter_username,
            "vote": v.vote,
            "comment": v.comment,
            "via": v.via,
            "break_glass": v.break_glass,
            "at": v.created_at.isoformat() if v.created_at else None,
        }
        for v in votes
    ]
