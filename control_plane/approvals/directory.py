"""Who approvers are when they decide from a chat tool: the groups pgward last saw them present.

pgward has no user database for people (their groups come from OIDC tokens), so every identity that
signs in to the API or the gateway is remembered with its groups; a chat decision is taken in the name
of that identity and counts only while the record is recent. Service identities use their stored groups.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import structlog

from control_plane.approvals.repository import ApprovalRepository
from control_plane.identity.credentials import Identity
from control_plane.store.db import SessionMaker
from control_plane.store.errors import RefusedError
from control_plane.store.repositories import ServiceIdentityRepository

log = structlog.get_logger("pgward.approvals")
# Write the same identity and groups at most this often (seconds).
_REFRESH = 300.0
_recent: dict[tuple[str, str, tuple[str, ...]], float] = {}


async def remember(sessionmaker: SessionMaker, identity: Identity) -> None:
    """Record that `identity` signed in with these groups (cheap: one write per 5 minutes at most)."""
    key = (identity.issuer, identity.subject, tuple(sorted(identity.groups)))
    now = time.monotonic()
    if now - _recent.get(key, -_REFRESH) < _REFRESH:
        return
    try:
        async with sessionmaker() as session:
            await ApprovalRepository(session).saw_identity(
                issuer=identity.issuer,
                subject=identity.subject,
                username=identity.username,
                kind=identity.kind,
                groups=list(identity.groups),
                now=datetime.now(UTC),
            )
            await session.commit()
    except Exception:
        log.warning("could not record a known identity", exc_info=True)
        return
    if len(_recent) > 10_000:
        _recent.clear()
    _recent[key] = now


async def resolve(sessionmaker: SessionMaker, username: str, *, max_age: float, via: str) -> Identity:
    """The identity a chat user is mapped to, with the groups pgward last saw; refused when unknown,
    ambiguous, disabled or not seen recently."""
    async with sessionmaker() as session:
        known = await ApprovalRepository(session).known_by_username(username)
        if len(known) > 1:
            raise RefusedError(
                f'"{username}" names more than one identity pgward knows; map the chat user to one',
                status=403,
                slug="unknown-approver",
            )
        if not known:
            raise RefusedError(
                f'pgward has not seen "{username}" sign in; sign in to pgward once so it knows your groups',
                status=403,
                slug="unknown-approver",
            )
        record = known[0]
        groups = list(record.groups)
        if record.kind == "service":
            stored = await ServiceIdentityRepository(session).get_by_name(username)
            if stored is None or stored.disabled:
                raise RefusedError(
                    f'service identity "{username}" is disabled or gone', status=403, slug="unknown-approver"
                )
            groups = list(stored.groups)
        elif datetime.now(UTC) - record.seen_at > timedelta(seconds=max_age):
            raise RefusedError(
                f'pgward last saw "{username}" sign in at {record.seen_at.isoformat()}; sign in again so '
                "pgward knows you are still an approver",
                status=403,
                slug="unknown-approver",
            )
    return Identity(
        subject=record.subject,
        username=record.username,
        groups=tuple(groups),
        issuer=record.issuer,
        kind=record.kind,
        credential=via,
    )
