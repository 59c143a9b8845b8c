"""Deciding a review or an access request: who may vote, N of M, self-approval and break-glass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from control_plane.approvals.repository import ApprovalRepository
from control_plane.identity.credentials import Identity
from control_plane.store.errors import RefusedError
from control_plane.store.models import AccessRequest, ApprovalVote, Review

Vote = Literal["approve", "deny"]
MAX_COMMENT = 2000


def already_decided(label: str, item: Review | AccessRequest) -> RefusedError:
    when = f" at {item.decided_at.isoformat()}" if item.decided_at else ""
    return RefusedError(
        f"{label} {item.id} is already {item.state}{when}", status=409, slug="already-decided"
    )


def expired(label: str, item: Review | AccessRequest) -> RefusedError:
    return RefusedError(
        f"{label} {item.id} expired at {item.expires_at.isoformat()} without a decision; it can no longer "
        "be decided",
        status=409,
        slug="expired",
    )


def is_requester(item: Review | AccessRequest, identity: Identity) -> bool:
    return item.requester_issuer == identity.issuer and item.requester_subject == identity.subject


def may_decide(item: Review | AccessRequest, identity: Identity) -> bool:
    if is_requester(item, identity):
        return bool(item.break_glass_allowed)
    return bool(set(identity.groups) & set(item.approver_groups))


@dataclass(frozen=True)
class Outcome:
    """What a vote did: `decided` when the item left the pending state with this vote."""

    decided: bool
    state: str
    break_glass: bool


async def cast(
    repository: ApprovalRepository,
    item: Review | AccessRequest,
    label: str,
    voter: Identity,
    vote: Vote,
    comment: str | None,
    *,
    now: datetime,
    break_glass: bool = False,
    via: str = "api",
) -> Outcome:
    """Record one vote on `item` (locked by the caller) and move it on when the vote decides it."""
    if comment is not None and len(comment) > MAX_COMMENT:
        raise RefusedError(f"comment is longer than {MAX_COMMENT} characters", status=400, slug="bad-request")
    if item.state == "pending" and item.expires_at <= now:
        item.state, item.decided_at = "expired", now
    if item.state == "expired" and item.decided_at is not None and item.decided_at >= item.expires_at:
        raise expired(label, item)
    if item.state != "pending":
        raise already_decided(label, item)
    if is_requester(item, voter):
        if vote == "approve" and not break_glass:
            raise RefusedError(
                f"{voter.username} requested {label} {item.id} and may not approve it: nobody approves "
                "their own request, administrators included",
                status=403,
                slug="self-approval",
            )
        if break_glass:
            if not item.break_glass_allowed:
                raise RefusedError(
                    f"the policy of {label} {item.id} does not allow break-glass approval",
                    status=403,
                    slug="break-glass-not-allowed",
                )
            if vote != "approve" or not (comment or "").strip():
                raise RefusedError(
                    "break-glass approval needs a reason: approve with a comment saying why",
                    status=400,
                    slug="reason-required",
                )
    elif break_glass:
        raise RefusedError(
            "break-glass is for the requester's own emergency; approvers approve normally",
            status=400,
            slug="bad-request",
        )
    elif not set(voter.groups) & set(item.approver_groups):
        raise RefusedError(
            f"{voter.username} may not decide {label} {item.id}: it needs one of the groups "
            f"{', '.join(item.approver_groups) or '(none)'}",
            status=403,
            slug="not-an-approver",
        )
    previous = await repository.votes(item.id)
    if any(v.voter_issuer == voter.issuer and v.voter_subject == voter.subject for v in previous):
        raise RefusedError(
            f"{voter.username} already voted on {label} {item.id}", status=409, slug="already-decided"
        )
    await repository.add(
        ApprovalVote(
            item_id=item.id,
            voter_issuer=voter.issuer,
            voter_subject=voter.subject,
            voter_username=voter.username,
            vote=vote,
            comment=comment,
            via=via,
            break_glass=break_glass,
        )
    )
    if vote == "deny":
        item.state = "withdrawn" if is_requester(item, voter) else "denied"
        item.decided_at, item.comment = now, comment
        return Outcome(True, item.state, False)
    approvals = 1 + sum(1 for v in previous if v.vote == "approve")
    if break_glass or approvals >= item.approvals_required:
        item.state, item.decided_at, item.comment = "approved", now, comment
        item.break_glass = break_glass
        return Outcome(True, "approved", break_glass)
    return Outcome(False, "pending", False)
