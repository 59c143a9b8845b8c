"""Delivering webhooks: a background worker per process, leased rows so processes never double-send,
retries with exponential backoff, and nothing on the data plane's path (events are rows; sending is here)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import httpx
import structlog

from control_plane.approvals import events, signing
from control_plane.approvals.repository import ApprovalRepository
from control_plane.config import Settings
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker
from control_plane.store.models import Webhook, WebhookDelivery

log = structlog.get_logger("pgward.webhooks")
LEASE = timedelta(seconds=120)
BATCH = 20


class DeliveryWorker:
    def __init__(self, settings: Settings, sessionmaker: SessionMaker, box: SecretBox) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.box = box
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.settings.webhook_timeout, follow_redirects=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pgward-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events.deliveries_queued.wait(), timeout=1.0)
            events.deliveries_queued.clear()
            try:
                while await self.deliver_due():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook delivery round failed", exc_info=True)

    async def deliver_due(self) -> int:
        """Send every delivery that is due now (one batch); returns how many were attempted."""
        now = datetime.now(UTC)
        async with self.sessionmaker() as session:
            repository = ApprovalRepository(session)
            rows = await repository.claim_due(now, now + LEASE, BATCH)
            work = []
            for row in rows:
                hook = await session.get(Webhook, row.webhook_id)
                if hook is not None:
                    work.append(
                        (row.id, row.message_id, row.body, hook.url, self.box.decrypt(hook.secret_ciphertext))
                    )
            await session.commit()
        if not work:
            return 0
        results = await asyncio.gather(
            *(self._send(url, secret, mid, body) for _, mid, body, url, secret in work)
        )
        async with self.sessionmaker() as session:
            for (delivery_id, *_), (status, error) in zip(work, results, strict=True):
                done = await session.get(WebhookDelivery, delivery_id)
                if done is not None:
                    self._record(done, status, error)
            await session.commit()
        return len(work)

    async def _send(self, url: str, secret: str, message_id: str, body: str) -> tuple[int | None, str | None]:
        assert self._client is not None
        payload = body.encode()
        timestamp = int(datetime.now(UTC).timestamp())
        try:
            response = await self._client.post(
                url, content=payload, headers=signing.headers(secret, message_id, timestamp, payload)
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    def _record(self, row: WebhookDelivery, status: int | None, error: str | None) -> None:
        now = datetime.now(UTC)
        row.attempts += 1
        row.last_status, row.last_error = status, error
        if error is None:
            row.state, row.delivered_at = "delivered", now
            return
        if row.attempts >= self.settings.webhook_max_attempts:
            row.state = "failed"
            log.warning("webhook delivery failed for good", delivery=str(row.id), attempts=row.attempts)
            return
        delay = self.settings.webhook_retry_base * 4 ** (row.attempts - 1)
        row.next_attempt_at = now + timedelta(seconds=delay)
