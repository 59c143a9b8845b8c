"""Keeping a gateway's PolicyEngine current: load from the store, react to changes in this process
at once and to changes made by other processes within a poll interval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from pydantic import ValidationError

from control_plane.policy.documents import PolicyDocument
from control_plane.policy.engine import ActiveGrant, PolicyEngine, PolicySet
from control_plane.store.db import SessionMaker
from control_plane.store.repositories import PolicyRepository

log = structlog.get_logger("pgward.policy")


class ChangeSignal:
    """In-process notification that policies changed in the store (sent after the commit).

    `notify` waits for every listener, so an API call that changed a policy returns only after the
    gateways of this process have reloaded and dropped their cached decisions."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def subscribe(self, listener: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def notify(self) -> None:
        for listener in list(self._listeners):
            try:
                await listener()
            except Exception:
                log.exception("policy change listener failed")


policy_changed = ChangeSignal()


async def load_policy_set(sessionmaker: SessionMaker) -> PolicySet:
    """The store's policies as one PolicySet. A document that no longer validates makes the whole set
    empty (every session refused) rather than silently dropping its deny rules."""
    from control_plane.approvals.repository import ApprovalRepository

    async with sessionmaker() as session:
        repository = PolicyRepository(session)
        revision = await repository.revision()
        rows = await repository.all()
        granted = await ApprovalRepository(session).active_grants(datetime.now(UTC))
    grants = [
        ActiveGrant(g.policy, g.requester_issuer, g.requester_subject, g.ends_at.timestamp(), str(g.id))
        for g in granted
        if g.ends_at is not None
    ]
    docs = []
    for row in rows:
        try:
            docs.append(PolicyDocument.model_validate(row.document))
        except ValidationError as exc:
            log.error(
                "stored policy is invalid; refusing every session until it is fixed",
                policy=row.name,
                errors=exc.errors(include_input=False),
            )
            return PolicySet.build((), f"{revision}-invalid")
    return PolicySet.build(docs, revision, grants)


class PolicyWatcher:
    """Reloads the engine's policies when the store's revision moves; calls `listeners` after a reload."""

    def __init__(self, engine: PolicyEngine, sessionmaker: SessionMaker, *, interval: float = 2.0) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.interval = interval
        self.listeners: list[Callable[[], None]] = []
        self.revision: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._lock = asyncio.Lock()
        # Fires when the first just-in-time grant in force ends: no job has to run for access to end.
        self._expiry: asyncio.TimerHandle | None = None

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload when the revision changed (or `force`); True when the engine got a new PolicySet."""
        async with self._lock:
            async with self.sessionmaker() as session:
                revision = await PolicyRepository(session).revision()
            if not force and revision == self.revision:
                return False
            policy_set = await load_policy_set(self.sessionmaker)
            changed = policy_set.version != self.engine.version
            self.revision = revision
            self.engine.replace(policy_set)
            self._schedule_expiry(policy_set)
        if changed:
            log.info("policies loaded", version=policy_set.version, policies=len(policy_set.policies))
            for listener in list(self.listeners):
                try:
                    listener()
                except Exception:
                    log.exception("policy reload listener failed")
        return changed

    def _schedule_expiry(self, policy_set: PolicySet) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        ends = policy_set.next_expiry()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if ends is None:
            return
        # A hair after the end, so the reload no longer counts the grant as active.
        delay = max(0.0, ends - time.time()) + 0.05
        self._expiry = loop.call_later(delay, lambda: loop.create_task(self._expired()))

    async def _expired(self) -> None:
        try:
            await self.refresh(force=True)
        except Exception:
            log.warning("could not reload policies when a grant ended; retrying", exc_info=True)
            asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(self._expired()))

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        async def changed_here() -> None:
            await self.refresh()

        self._unsubscribe = policy_changed.subscribe(changed_here)
        self._task = loop.create_task(self._run(), name="pgward-policy-watcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store may be briefly away; the last good policies stay in force meanwhile.
                log.warning("could not check for policy changes", exc_info=True)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
