"""`/v1/reviews` and `/v1/access-requests`: list what the caller may see or decide, show, approve, deny."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, Field

from control_plane.api.deps import CurrentIdentity, SessionDep, SettingsDep, roles_of
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.approvals.repository import Item
from control_plane.approvals.service import (
    ApprovalService,
    after_commit,
    decode_after,
    encode_after,
    votes_out,
)
from control_plane.approvals.voting import may_decide
from control_plane.config import Settings
from control_plane.identity.credentials import Identity
from control_plane.store.errors import NotFoundError
from control_plane.store.models import AccessRequest, Review

reviews_router = APIRouter(prefix="/v1/reviews", tags=["approvals"], responses=PROBLEM_RESPONSES)
requests_router = APIRouter(prefix="/v1/access-requests", tags=["approvals"], responses=PROBLEM_RESPONSES)

State = Literal["pending", "approved", "denied", "expired", "withdrawn", "consumed"]


def get_approval_service(session: SessionDep, settings: SettingsDep) -> ApprovalService:
    return ApprovalService(session, base_url=settings.base_url, default_approvers=settings.approver_groups)


ApprovalServiceDep = Annotated[ApprovalService, Depends(get_approval_service)]


class DecisionIn(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)
    break_glass: bool = Field(
        default=False,
        description="The requester approves their own item in an emergency (only where the policy allows "
        "it; the comment is the mandatory reason). Loud: flagged and sent to every webhook.",
    )


class AccessRequestIn(BaseModel):
    connection: str = Field(min_length=1, max_length=63)
    policy: str = Field(min_length=1, max_length=63)
    duration: str = Field(description="How long the grant lasts once approved: 30m, 8h, 1d")
    reason: str | None = Field(default=None, max_length=500)


class ItemList(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


def _sees_all(identity: Identity, settings: Settings) -> bool:
    return bool({"admin", "auditor"} & set(roles_of(identity, settings)))


def _out(
    item: Review | AccessRequest, votes: list[dict[str, Any]], identity: Identity, base_url: str
) -> dict[str, Any]:
    common = {
        "id": str(item.id),
        "state": item.state,
        "requester": {
            "username": item.requester_username,
            "subject": item.requester_subject,
            "kind": item.requester_kind,
            "groups": list(item.requester_groups),
        },
        "connection": item.connection,
        "policy": item.policy,
        "approvers": list(item.approver_groups),
        "approvals_required": item.approvals_required,
        "approvals": sum(1 for v in votes if v["vote"] == "approve"),
        "votes": votes,
        "break_glass_allowed": item.break_glass_allowed,
        "break_glass": item.break_glass,
        "comment": item.comment,
        "reason": item.reason,
        "created_at": item.created_at.isoformat(),
        "expires_at": item.expires_at.isoformat(),
        "decided_at": item.decided_at.isoformat() if item.decided_at else None,
        "you_may_decide": item.state == "pending" and may_decide(item, identity),
    }
    if isinstance(item, Review):
        common.update(
            url=f"{base_url}/v1/reviews/{item.id}",
            mode=item.mode,
            sql=item.sql,
            what=item.what,
            rule=item.rule,
            session_uuid=item.session_uuid,
            valid_until=item.valid_until.isoformat() if item.valid_until else None,
            consumed_at=item.consumed_at.isoformat() if item.consumed_at else None,
        )
    else:
        common.update(
            url=f"{base_url}/v1/access-requests/{item.id}",
            duration_seconds=item.duration_seconds,
            starts_at=item.starts_at.isoformat() if item.starts_at else None,
            ends_at=item.ends_at.isoformat() if item.ends_at else None,
        )
    return common


async def _list(
    model: type[Item],
    service: ApprovalService,
    identity: Identity,
    settings: Settings,
    state: str | None,
    limit: int,
    cursor: str | None,
) -> ItemList:
    rows = await service.repository.list_visible(
        model,
        issuer=identity.issuer,
        subject=identity.subject,
        groups=list(identity.groups),
        see_all=_sees_all(identity, settings),
        # Pending items: what the caller may decide (the approver's inbox).
        decidable_only=state == "pending",
        state=state,
        after=decode_after(cursor),
        limit=limit + 1,
    )
    page, more = rows[:limit], len(rows) > limit
    votes = await service.repository.votes_for([r.id for r in page])
    items = [_out(r, votes_out(votes[r.id]), identity, settings.base_url) for r in page]
    return ItemList(items=items, next_cursor=encode_after(page[-1]) if more and page else None)


async def _show(
    model: type[Item], item_id: str, service: ApprovalService, identity: Identity, settings: Settings
) -> dict[str, Any]:
    item = await service.get(model, item_id)
    mine = item.requester_issuer == identity.issuer and item.requester_subject == identity.subject
    if not (mine or may_decide(item, identity) or _sees_all(identity, settings)):
        # 404, not 403: whether an item exists is not the caller's business.
        raise NotFoundError(f"{'review' if model is Review else 'access request'} {item_id} does not exist")
    return _out(item, votes_out(await service.votes(item.id)), identity, settings.base_url)


async def _decide(
    model: type[Item],
    item_id: str,
    vote: Literal["approve", "deny"],
    body: DecisionIn | None,
    service: ApprovalService,
    session: SessionDep,
    identity: Identity,
    settings: Settings,
) -> dict[str, Any]:
    body = body or DecisionIn()
    item, _ = await service.decide(model, item_id, identity, vote, body.comment, break_glass=body.break_glass)
    out = _out(item, votes_out(await service.votes(item.id)), identity, settings.base_url)
    await session.commit()
    await after_commit(service.changes)
    return out


@reviews_router.get("")
async def list_reviews(
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    settings: SettingsDep,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> ItemList:
    """Reviews the caller requested or may decide (admins and auditors: all). `state=pending`: the
    caller's inbox, only what they may decide now."""
    return await _list(Review, service, identity, settings, state, limit, cursor)


@reviews_router.get("/{review_id}")
async def get_review(
    review_id: str, identity: CurrentIdentity, service: ApprovalServiceDep, settings: SettingsDep
) -> dict[str, Any]:
    return await _show(Review, review_id, service, identity, settings)


@reviews_router.post("/{review_id}/approve")
async def approve_review(
    review_id: str,
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    session: SessionDep,
    settings: SettingsDep,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    return await _decide(Review, review_id, "approve", body, service, session, identity, settings)


@reviews_router.post("/{review_id}/deny")
async def deny_review(
    review_id: str,
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    session: SessionDep,
    settings: SettingsDep,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    return await _decide(Review, review_id, "deny", body, service, session, identity, settings)


@requests_router.post("", status_code=status.HTTP_201_CREATED)
async def create_access_request(
    body: AccessRequestIn,
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> dict[str, Any]:
    """Ask for a policy for a limited time; approvers decide, and the grant starts when approved."""
    request = await service.request_access(
        identity, connection=body.connection, policy=body.policy, duration=body.duration, reason=body.reason
    )
    out = _out(request, [], identity, settings.base_url)
    await session.commit()
    await after_commit(service.changes)
    response.headers["Location"] = f"/v1/access-requests/{request.id}"
    return out


@requests_router.get("")
async def list_access_requests(
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    settings: SettingsDep,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> ItemList:
    return await _list(AccessRequest, service, identity, settings, state, limit, cursor)


@requests_router.get("/{request_id}")
async def get_access_request(
    request_id: str, identity: CurrentIdentity, service: ApprovalServiceDep, settings: SettingsDep
) -> dict[str, Any]:
    return await _show(AccessRequest, request_id, service, identity, settings)


@requests_router.post("/{request_id}/approve")
async def approve_access_request(
    request_id: str,
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    session: SessionDep,
    settings: SettingsDep,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    return await _decide(AccessRequest, request_id, "approve", body, service, session, identity, settings)


@requests_router.post("/{request_id}/deny")
async def deny_access_request(
    request_id: str,
    identity: CurrentIdentity,
    service: ApprovalServiceDep,
    session: SessionDep,
    settings: SettingsDep,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    return await _decide(AccessRequest, request_id, "deny", body, service, session, identity, settings)
