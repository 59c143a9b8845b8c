"""Decisions from outside: Slack interactions (`/v1/integrations/slack/interactions`) and signed decision
callbacks (`/v1/integrations/{name}/decisions`). Both are authenticated by signature, not bearer token."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from control_plane.api.deps import SettingsDep, get_sessionmaker
from control_plane.api.problems import PROBLEM_RESPONSES, BadRequest, Conflict, NotFound, Unauthorized
from control_plane.approvals import directory, signing
from control_plane.approvals.service import ApprovalService, after_commit
from control_plane.config import Settings
from control_plane.store.db import SessionMaker
from control_plane.store.errors import StoreError
from control_plane.store.models import AccessRequest, Review

router = APIRouter(prefix="/v1/integrations", tags=["approvals"], responses=PROBLEM_RESPONSES)
SessionMakerDep = Annotated[SessionMaker, Depends(get_sessionmaker)]
MAX_BODY = 64 * 1024


class Replayed(Conflict):
    slug = "replayed"


class CallbackDecision(BaseModel):
    """The body of a signed decision callback."""

    kind: Literal["review", "access_request"]
    id: str
    decision: Literal["approve", "deny"]
    decider: str = Field(min_length=1, max_length=256, description="The pgward username deciding")
    comment: str | None = Field(default=None, max_length=2000)


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest("request body too large")
    return body


async def _apply(
    sessionmaker: SessionMaker,
    settings: Settings,
    *,
    replay_key: str,
    kind: str,
    item_id: str,
    decision: Literal["approve", "deny"],
    username: str,
    comment: str | None,
    via: str,
) -> dict[str, Any]:
    """Take the decision in the name of `username` once; a second message with `replay_key` is refused."""
    async with sessionmaker() as session:
        service = ApprovalService(
            session, base_url=settings.base_url, default_approvers=settings.approver_groups
        )
        seen = await service.repository.inbound(replay_key)
        if seen is not None:
            raise Replayed(f"this message was already processed; nothing changed (outcome: {seen.outcome})")
        identity = await directory.resolve(
            sessionmaker, username, max_age=settings.chat_identity_max_age, via=via
        )
        item: Review | AccessRequest
        if kind == "review":
            item, _ = await service.decide(Review, item_id, identity, decision, comment, via=via)
        else:
            item, _ = await service.decide(AccessRequest, item_id, identity, decision, comment, via=via)
        result = {
            "kind": kind,
            "id": str(item.id),
            "state": item.state,
            "decider": identity.username,
            "vote": decision,
        }
        if not await service.repository.remember_inbound(replay_key, result):
            raise Replayed("this message was already processed; nothing changed")
        await session.commit()
    await after_commit(service.changes)
    return result


@router.post("/slack/interactions")
async def slack_interaction(
    request: Request,
    settings: SettingsDep,
    sessionmaker: SessionMakerDep,
    x_slack_request_timestamp: Annotated[str | None, Header()] = None,
    x_slack_signature: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """A button press on a pgward message in Slack (Approve/Deny)."""
    if settings.slack_signing_secret is None:
        raise NotFound("Slack interactions are not configured (PGWARD_SLACK_SIGNING_SECRET)")
    body = await _body(request)
    try:
        signing.verify_slack(
            settings.slack_signing_secret.get_secret_value(),
            x_slack_request_timestamp,
            x_slack_signature,
            body,
            now=time.time(),
        )
    except signing.SignatureError as exc:
        raise Unauthorized(str(exc)) from None
    try:
        payload = json.loads(parse_qs(body.decode()).get("payload", ["{}"])[0])
        action = payload["actions"][0]
        user = str(payload["user"]["id"])
        kind, _, item_id = str(action["value"]).partition(":")
        vote = {"approve": "approve", "deny": "deny"}[action["action_id"]]
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError):
        raise BadRequest("not a pgward Approve/Deny interaction") from None
    if kind not in ("review", "access_request"):
        raise BadRequest("not a pgward Approve/Deny interaction")
    username = settings.slack_users.get(user)
    if username is None:
        return JSONResponse(
            {"response_type": "ephemeral", "text": f"Slack user {user} is not mapped to a pgward identity."},
            status_code=200,
        )
    try:
        result = await _apply(
            sessionmaker,
            settings,
            replay_key=f"slack:{x_slack_request_timestamp}:{x_slack_signature}",
            kind=kind,
            item_id=item_id,
            decision=vote,  # type: ignore[arg-type]
            username=username,
            comment=f"via Slack by {username}",
            via="slack",
        )
    except StoreError as exc:
        # Slack shows the text to the person who pressed the button.
        return JSONResponse(
            {"response_type": "ephemeral", "text": f"pgward refused: {exc.message}"}, status_code=200
        )
    text = f"{kind.replace('_', ' ')} {result['id']}: {username} voted {vote}; now {result['state']}"
    return JSONResponse({"response_type": "in_channel", "replace_original": False, "text": text})


@router.post("/{name}/decisions")
async def signed_decision(
    name: str,
    request: Request,
    settings: SettingsDep,
    sessionmaker: SessionMakerDep,
    webhook_id: Annotated[str | None, Header()] = None,
    webhook_timestamp: Annotated[str | None, Header()] = None,
    webhook_signature: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """A decision signed with the integration's secret (Standard Webhooks headers). Each webhook-id is
    processed once: a replay is refused with 409 and changes nothing."""
    secret = settings.decision_secrets.get(name)
    if secret is None:
        raise NotFound(f'no decision integration named "{name}" (PGWARD_DECISION_SECRETS)')
    body = await _body(request)
    try:
        signing.verify_standard(
            secret.get_secret_value(), webhook_id, webhook_timestamp, webhook_signature, body, now=time.time()
        )
    except signing.SignatureError as exc:
        raise Unauthorized(str(exc)) from None
    try:
        decision = CallbackDecision.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(f"invalid decision: {exc.errors(include_input=False)[0]['msg']}") from None
    return await _apply(
        sessionmaker,
        settings,
        replay_key=f"{name}:{webhook_id}",
        kind=decision.kind,
        item_id=decision.id,
        decision=decision.decision,
        username=decision.decider,
        comment=decision.comment,
        via=name,
    )
