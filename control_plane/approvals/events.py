"""Approval events: the JSON every webhook receives, queued in the same transaction as the change."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.approvals.repository import ApprovalRepository
from control_plane.store.models import AccessRequest, Review, WebhookDelivery

EVENTS: tuple[str, ...] = (
    "review.created",
    "review.decided",
    "review.expired",
    "review.executed",
    "access_request.created",
    "access_request.decided",
    "access_request.expired",
    "break_glass.used",
)
# Break-glass is loud: every enabled endpoint gets it, whatever events it subscribed to.
ALWAYS_SENT = frozenset({"break_glass.used"})

# Set after a commit that queued deliveries: the delivery worker of this process starts at once
# (other processes find them on their next poll).
deliveries_queued = asyncio.Event()


def review_data(review: Review, base_url: str) -> dict[str, Any]:
    return {
        "kind": "review",
        "id": str(review.id),
        "url": f"{base_url}/v1/reviews/{review.id}",
        "state": review.state,
        "mode": review.mode,
        "requester": review.requester_username,
        "connection": review.connection,
        "sql": review.sql,
        "what": review.what,
        "reason": review.reason,
        "policy": review.policy,
        "rule": review.rule,
        "approvers": list(review.approver_groups),
        "approvals_required": review.approvals_required,
        "break_glass": review.break_glass,
        "comment": review.comment,
        "expires_at": review.expires_at.isoformat(),
    }


def access_request_data(request: AccessRequest, base_url: str) -> dict[str, Any]:
    return {
        "kind": "access_request",
        "id": str(request.id),
        "url": f"{base_url}/v1/access-requests/{request.id}",
        "state": request.state,
        "requester": request.requester_username,
        "connection": request.connection,
        "policy": request.policy,
        "duration_seconds": request.duration_seconds,
        "reason": request.reason,
        "approvers": list(request.approver_groups),
        "approvals_required": request.approvals_required,
        "break_glass": request.break_glass,
        "comment": request.comment,
        "expires_at": request.expires_at.isoformat(),
        "starts_at": request.starts_at.isoformat() if request.starts_at else None,
        "ends_at": request.ends_at.isoformat() if request.ends_at else None,
    }


async def emit(session: AsyncSession, event: str, data: dict[str, Any]) -> int:
    """Queue `event` for every enabled webhook subscribed to it; returns how many deliveries."""
    from control_plane.approvals.formats import render

    assert event in EVENTS, event
    repository = ApprovalRepository(session)
    now = datetime.now(UTC)
    envelope = {"type": event, "timestamp": now.isoformat(), "data": data}
    queued = 0
    for hook in await repository.webhooks():
        if not hook.enabled:
            continue
        if event not in ALWAYS_SENT and "*" not in hook.events and event not in hook.events:
            continue
        body = json.dumps(render(hook.format, envelope), separators=(",", ":"), sort_keys=True)
        await repository.add(
            WebhookDelivery(
                webhook_id=hook.id,
                message_id=f"msg_{uuid.uuid4().hex}",
                event=event,
                body=body,
                state="pending",
                next_attempt_at=now,
            )
        )
        queued += 1
    return queued


def wake_deliveries() -> None:
    deliveries_queued.set()
