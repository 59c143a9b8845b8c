"""`/v1/webhooks`: outgoing endpoints (admins), their delivery log and redelivery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field, HttpUrl, field_validator

from control_plane.api.deps import AdminIdentity, SecretBoxDep, SessionDep
from control_plane.api.problems import PROBLEM_RESPONSES
from control_plane.approvals import events, signing
from control_plane.approvals.repository import ApprovalRepository
from control_plane.approvals.service import decode_after
from control_plane.connections.schemas import ResourceName
from control_plane.store.errors import InvalidInputError, NotFoundError
from control_plane.store.models import Webhook, WebhookDelivery

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=PROBLEM_RESPONSES)


class WebhookIn(BaseModel):
    url: HttpUrl
    events: list[str] = Field(
        default_factory=lambda: ["*"], description=f"Event types or *: {', '.join(events.EVENTS)}"
    )
    format: Literal["standard", "slack"] = "standard"
    secret: str | None = Field(default=None, description="whsec_… (omitted on create: generated, shown once)")
    enabled: bool = True

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e != "*" and e not in events.EVENTS]
        if unknown:
            raise ValueError(f"unknown events {', '.join(unknown)}; known: {', '.join(events.EVENTS)}")
        return value


class WebhookOut(BaseModel):
    name: str
    url: str
    events: list[str]
    format: str
    enabled: bool
    created_at: datetime
    secret: str | None = Field(default=None, description="Only in the answer that created or changed it")


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: str
    message_id: str
    event: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    body: dict[str, Any]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def _out(hook: Webhook, secret: str | None = None) -> WebhookOut:
    return WebhookOut(
        name=hook.name,
        url=hook.url,
        events=list(hook.events),
        format=hook.format,
        enabled=hook.enabled,
        created_at=hook.created_at,
        secret=secret,
    )


def _delivery(row: WebhookDelivery) -> DeliveryOut:
    import json

    return DeliveryOut(
        id=str(row.id),
        message_id=row.message_id,
        event=row.event,
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        body=json.loads(row.body),
    )


async def _hook(repository: ApprovalRepository, name: str) -> Webhook:
    hook = await repository.webhook_by_name(name)
    if hook is None:
        raise NotFoundError(f'webhook "{name}" does not exist')
    return hook


@router.get("")
async def list_webhooks(_: AdminIdentity, session: SessionDep) -> WebhookList:
    return WebhookList(
        items=[_out(h) for h in await ApprovalRepository(session).webhooks()], next_cursor=None
    )


@router.put("/{name}", responses={201: {"model": WebhookOut, "description": "Created"}})
async def put_webhook(
    name: ResourceName,
    body: WebhookIn,
    _: AdminIdentity,
    session: SessionDep,
    box: SecretBoxDep,
    response: Response,
) -> WebhookOut:
    """Create or replace an endpoint. The signing secret is returned only when it was generated."""
    repository = ApprovalRepository(session)
    shown: str | None = None
    if body.secret is not None:
        try:
            signing.secret_key(body.secret)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    hook = await repository.webhook_by_name(name, for_update=True)
    if hook is None:
        secret = body.secret or signing.new_secret()
        shown = None if body.secret else secret
        hook = Webhook(
            id=uuid.uuid4(),
            name=name,
            url=str(body.url),
            format=body.format,
            events=list(body.events),
            secret_ciphertext=box.encrypt(secret),
            enabled=body.enabled,
            created_at=datetime.now(UTC),
        )
        await repository.add(hook)
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/v1/webhooks/{name}"
    else:
        hook.url, hook.format, hook.events, hook.enabled = (
            str(body.url),
            body.format,
            list(body.events),
            body.enabled,
        )
        if body.secret is not None:
            hook.secret_ciphertext = box.encrypt(body.secret)
        await session.flush()
    return _out(hook, shown)


@router.get("/{name}")
async def get_webhook(name: ResourceName, _: AdminIdentity, session: SessionDep) -> WebhookOut:
    return _out(await _hook(ApprovalRepository(session), name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(name: ResourceName, _: AdminIdentity, session: SessionDep) -> None:
    repository = ApprovalRepository(session)
    await repository.delete_webhook(await _hook(repository, name))


@router.get("/{name}/deliveries")
async def list_deliveries(
    name: ResourceName,
    _: AdminIdentity,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> DeliveryList:
    """The delivery log, oldest first: every event sent (or being retried) to this endpoint."""
    repository = ApprovalRepository(session)
    hook = await _hook(repository, name)
    rows = await repository.deliveries(hook.id, decode_after(cursor), limit + 1)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit and page:
        from control_plane.approvals.service import encode_after

        next_cursor = encode_after(page[-1])
    return DeliveryList(items=[_delivery(r) for r in page], next_cursor=next_cursor)


@router.post("/{name}/deliveries/{delivery_id}/redeliver", status_code=status.HTTP_202_ACCEPTED)
async def redeliver(
    name: ResourceName, delivery_id: str, _: AdminIdentity, session: SessionDep
) -> DeliveryOut:
    """Send a delivery again (same body and webhook-id, a fresh timestamp and signature)."""
    repository = ApprovalRepository(session)
    hook = await _hook(repository, name)
    try:
        row = await repository.delivery(uuid.UUID(delivery_id))
    except ValueError:
        row = None
    if row is None or row.webhook_id != hook.id:
        raise NotFoundError(f'delivery {delivery_id} of webhook "{name}" does not exist')
    row.state, row.attempts, row.next_attempt_at = "pending", 0, datetime.now(UTC)
    row.last_error = None
    await session.flush()
    out = _delivery(row)
    await session.commit()
    events.wake_deliveries()
    return out
