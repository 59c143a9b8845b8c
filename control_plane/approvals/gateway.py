"""The gateway's side of statement reviews: a statement that needs approval opens a review (or reuses
the pending one), and an approved deferred review lets exactly that statement run once."""

from __future__ import annotations

from typing import Any

import structlog

from control_plane.approvals.holds import WAIT_MARGIN, HeldStatements
from control_plane.approvals.reasons import statement_reason
from control_plane.approvals.service import ApprovalService, after_commit
from control_plane.config import Settings
from control_plane.identity.credentials import Identity
from control_plane.policy.engine import StatementDecision
from control_plane.store.db import SessionMaker
from control_plane.store.models import Review

log = structlog.get_logger("pgward.approvals")


def _refusal(message: str, detail: str, hint: str, audit: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "audit": audit or {},
        "action": "deny",
        "sqlstate": "42501",
        "message": message,
        "detail": detail,
        "hint": hint,
        "cache": "none",
    }


class StatementReviews:
    def __init__(self, settings: Settings, sessionmaker: SessionMaker) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.holds = HeldStatements(settings, sessionmaker)

    def _service(self, session: Any) -> ApprovalService:
        return ApprovalService(
            session, base_url=self.settings.base_url, default_approvers=self.settings.approver_groups
        )

    async def answer(
        self,
        identity: Identity,
        connection: str,
        session_uuid: str | None,
        sql: str,
        source: str,
        decision: StatementDecision,
        *,
        audit: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The data plane's answer for a statement the policies send for approval. `audit` is the
        decision's audit metadata; answers add the review id to it."""
        audit = dict(audit or {})
        need = decision.approval
        assert need is not None
        if source != "query":
            # Bind can run an unnamed or named statement any number of times after one Parse, so
            # "once" could not be kept; the simple query protocol carries the values in the text.
            return _refusal(
                f"{decision.message}; statements that need approval are accepted only through the "
                "simple query protocol",
                f"approval required by {need.source}; an approved "
                "statement runs exactly once, which a prepared statement cannot promise",
                "run it as a plain query (psql does; psycopg: ClientCursor, with the values in the text)",
                audit,
            )
        async with self.sessionmaker() as session:
            service = self._service(session)
            used = await service.use_approved(identity, connection, sql)
            if used is not None:
                await session.commit()
                await after_commit(service.changes)
                log.info("approved statement runs", review=str(used.id), identity=identity.subject)
                answer = decision.approved_answer()
                answer["audit"] = {**audit, "approval": str(used.id)}
                return answer
            held = need.approval.mode == "held"
            # A held statement gets a review of its own (the session waits on it); a deferred one
            # reuses the pending review of the same statement.
            review = None if held else await service.pending_review(identity, connection, sql)
            created = review is None
            if review is None:
                reason = statement_reason(sql)
                if need.approval.reason_required and reason is None:
                    return _refusal(
                        f"{decision.message}, and a reason is required",
                        f"approval required by {need.source}, which asks for a reason",
                        "start the statement with a comment saying why: /* reason: INC-1234 */ …",
                        audit,
                    )
                review = await service.open_review(
                    identity,
                    connection=connection,
                    session_uuid=session_uuid,
                    sql=sql,
                    what=need.what,
                    reason=reason,
                    policy=need.policy,
                    rule=need.rule,
                    approval=need.approval,
                    mode="held" if held else "deferred",
                )
                await session.commit()
                await after_commit(service.changes)
                log.info(
                    "review opened", review=str(review.id), identity=identity.subject, policy=need.policy
                )
        audit = {**audit, "approval": str(review.id)}
        if held:
            return self._hold(review, decision, audit)
        return self._pending(review, decision, created=created, audit=audit)

    def _hold(self, review: Review, decision: StatementDecision, audit: dict[str, Any]) -> dict[str, Any]:
        """Keep the client waiting: a NoticeResponse now, the statement's answer when decided."""
        self.holds.hold(str(review.id), {**decision.approved_answer(), "audit": audit})
        url = f"{self.settings.base_url}/v1/reviews/{review.id}"
        needed = review.approvals_required
        limit = (review.expires_at - review.created_at).total_seconds()
        return {
            "action": "hold",
            "review": str(review.id),
            "sqlstate": "01000",
            "message": f"pgward is holding this statement for approval: review {review.id}",
            "detail": f"review {review.id}: {review.what}; approvers: {', '.join(review.approver_groups)}; "
            f"{needed} approval{'s' if needed > 1 else ''} needed; decide at {url}",
            "hint": f"waiting up to {max(1, int(limit) // 60)} min for the decision; cancel (Ctrl-C) to "
            "withdraw the review",
            "wait": limit + WAIT_MARGIN,
            "cache": "none",
            "audit": audit,
        }

    def _pending(
        self, review: Review, decision: StatementDecision, *, created: bool, audit: dict[str, Any]
    ) -> dict[str, Any]:
        url = f"{self.settings.base_url}/v1/reviews/{review.id}"
        groups = ", ".join(review.approver_groups)
        needed = review.approvals_required
        minutes = max(1, review.valid_for_seconds // 60)
        detail = (
            f"review {review.id} ({'opened' if created else 'still pending'}): {review.what}; "
            f"approvers: {groups}; {needed} approval{'s' if needed > 1 else ''} needed; decide at {url}"
        )
        return _refusal(
            f"{decision.message}: review {review.id} is pending",
            detail,
            f"after approval, run exactly the same statement again within {minutes} min (it runs once)",
            audit,
        )
