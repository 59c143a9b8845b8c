"""Statement reviews through the real gateway: deferred approval with psql and psycopg, N of M,
self-approval, wrong group, denial, expiry, reasons, break-glass and guardrails sent for review."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.approvals.conftest import ApprovalsGateway

REVIEW_ID = re.compile(r"review ([0-9a-f-]{36})")


def review_of(exc: BaseException) -> str:
    """The review id the 42501's DETAIL names (the contract: approval pending = 42501 + review id)."""
    assert isinstance(exc, errors.InsufficientPrivilege), exc
    detail = exc.diag.message_detail or ""
    match = REVIEW_ID.search(detail)
    assert match, detail
    return match.group(1)


def refused(
    ag: ApprovalsGateway, name: str, sql: str, *, client_cursor: bool = True, params: Any = None
) -> str:
    with ag.connect(name) as conn:
        cur = psycopg.ClientCursor(conn) if client_cursor else conn.cursor()
        with pytest.raises(errors.InsufficientPrivilege) as info:
            cur.execute(sql, params)
    return review_of(info.value)


def runs(ag: ApprovalsGateway, name: str, sql: str, params: Any = None) -> int:
    with ag.connect(name) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(sql, params)
        return cur.rowcount


def vote(ag: ApprovalsGateway, who: str, review: str, how: str = "approve", **body: Any) -> Any:
    with ag.api(who) as api:
        return api.post(f"/v1/reviews/{review}/{how}", json=body or None)


def table(ag: ApprovalsGateway, name: str, rows: int = 3) -> None:
    with ag.owner() as conn:
        conn.execute(f"DROP TABLE IF EXISTS public.{name}")
        conn.execute(f"CREATE TABLE public.{name} (id int primary key, v text)")
        conn.execute(f"INSERT INTO public.{name} SELECT g, 'v' || g FROM generate_series(1, {rows}) g")


def exists(ag: ApprovalsGateway, name: str) -> bool:
    with ag.owner() as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{name}"]).fetchone() == (True,)


def test_psql_deferred_drop_runs_once_after_approval(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_drop1")
    first = ag.psql("bob", "DROP TABLE public.apv_drop1")
    assert "ERROR:  refused by pgward" in first.stderr and "requires approval" in first.stderr, first.stderr
    review = REVIEW_ID.search(first.stderr)
    assert review, first.stderr
    rid = review.group(1)
    assert f"https://pgward.example.test/v1/reviews/{rid}" in first.stderr
    assert exists(ag, "apv_drop1")
    # Asking again before a decision reuses the pending review.
    again = ag.psql("bob", "DROP TABLE public.apv_drop1")
    assert rid in again.stderr and "still pending" in again.stderr

    with ag.api("carol") as api:
        inbox = api.get("/v1/reviews", params={"state": "pending"}).json()["items"]
        assert rid in [i["id"] for i in inbox]
        shown = api.get(f"/v1/reviews/{rid}").json()
        assert shown["sql"] == "DROP TABLE public.apv_drop1" and shown["requester"]["username"] == "bob"
        assert shown["mode"] == "deferred" and shown["you_may_decide"] is True
    approved = vote(ag, "carol", rid, comment="ok for the cleanup")
    assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text

    # A different text (one more space) is a different statement: not covered by the approval.
    other = ag.psql("bob", "DROP TABLE  public.apv_drop1")
    assert "requires approval" in other.stderr and rid not in other.stderr
    done = ag.psql("bob", "DROP TABLE public.apv_drop1")
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
    assert not exists(ag, "apv_drop1")
    with ag.api("carol") as api:
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "consumed"
    # Once: the same statement again needs a new review.
    table(ag, "apv_drop1")
    rerun = ag.psql("bob", "DROP TABLE public.apv_drop1")
    assert "requires approval" in rerun.stderr and rid not in rerun.stderr
    assert exists(ag, "apv_drop1")


def test_psycopg_same_text_and_values_only(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_del1")
    sql = "DELETE FROM public.apv_del1 WHERE id = %s"
    rid = refused(ag, "bob", sql, params=[2])
    assert vote(ag, "carol", rid).json()["state"] == "approved"
    # Other values: not what was reviewed.
    other = refused(ag, "bob", sql, params=[3])
    assert other != rid
    assert runs(ag, "bob", sql, params=[2]) == 1
    with ag.owner() as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM public.apv_del1 ORDER BY id")] == [1, 3]


def test_extended_protocol_statements_needing_approval_are_refused(
    approvals_gateway: ApprovalsGateway,
) -> None:
    ag = approvals_gateway
    table(ag, "apv_del2")
    with ag.connect("bob") as conn, pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute("DELETE FROM public.apv_del2 WHERE id = %s", [1])
    assert "simple query protocol" in str(info.value)


def test_n_of_m_needs_two_different_approvers(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_two1")
    rid = refused(ag, "bob", "UPDATE public.apv_two1 SET v = 'x' WHERE id = 1")
    first = vote(ag, "carol", rid)
    assert first.status_code == 200 and first.json()["state"] == "pending"
    assert first.json()["approvals"] == 1 and first.json()["approvals_required"] == 2
    twice = vote(ag, "carol", rid)
    assert twice.status_code == 409 and twice.json()["type"] == "urn:pgward:problem:already-decided"
    # Still pending: the statement does not run yet.
    assert refused(ag, "bob", "UPDATE public.apv_two1 SET v = 'x' WHERE id = 1") == rid
    second = vote(ag, "dave", rid)
    assert second.json()["state"] == "approved" and second.json()["approvals"] == 2
    assert [v["voter"] for v in second.json()["votes"]] == ["carol", "dave"]
    assert runs(ag, "bob", "UPDATE public.apv_two1 SET v = 'x' WHERE id = 1") == 1
    decided_again = vote(ag, "dave", rid, how="deny")
    assert decided_again.status_code == 409 and "already consumed" in decided_again.json()["detail"]


def test_nobody_approves_their_own_request_admins_included(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_del3")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del3 WHERE id = 1")
    # bob is in admins and approvers: still not his own.
    own = vote(ag, "bob", rid)
    assert own.status_code == 403 and own.json()["type"] == "urn:pgward:problem:self-approval", own.text
    glass = vote(ag, "bob", rid, comment="urgent", break_glass=True)
    assert glass.status_code == 403 and glass.json()["type"] == "urn:pgward:problem:break-glass-not-allowed"
    # Someone outside the approver groups may not decide, and does not even see it.
    with ag.api("erin") as api:
        wrong = api.post(f"/v1/reviews/{rid}/approve")
        assert wrong.status_code == 403 and wrong.json()["type"] == "urn:pgward:problem:not-an-approver"
        assert api.get(f"/v1/reviews/{rid}").status_code == 404
        assert rid not in [
            i["id"] for i in api.get("/v1/reviews", params={"state": "pending"}).json()["items"]
        ]
    # bob's own inbox does not offer it either.
    with ag.api("bob") as api:
        assert rid not in [
            i["id"] for i in api.get("/v1/reviews", params={"state": "pending"}).json()["items"]
        ]
    with ag.api("carol") as api:
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "pending"


def test_denied_review_is_refused_with_the_comment(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_del4")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del4 WHERE id = 1")
    denied = vote(ag, "carol", rid, how="deny", comment="not during the sale")
    assert denied.json()["state"] == "denied" and denied.json()["comment"] == "not during the sale"
    with ag.api("bob") as api:
        mine = api.get(f"/v1/reviews/{rid}").json()
        assert mine["state"] == "denied" and mine["votes"][0]["comment"] == "not during the sale"
    # The denied statement does not run; asking again opens a fresh review.
    assert refused(ag, "bob", "DELETE FROM public.apv_del4 WHERE id = 1") != rid
    with ag.owner() as conn:
        assert conn.execute("SELECT count(*) FROM public.apv_del4").fetchone() == (3,)


def test_expired_review_cannot_be_decided(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_quick1")
    rid = refused(ag, "bob", "DELETE FROM public.apv_quick1 WHERE id = 1")
    with ag.api("carol") as api:
        deadline = time.monotonic() + 30
        while api.get(f"/v1/reviews/{rid}").json()["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "expired"
        late = api.post(f"/v1/reviews/{rid}/approve")
    assert late.status_code == 409 and late.json()["type"] == "urn:pgward:problem:expired", late.text


def test_reason_required_comes_from_a_comment(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_reason1")
    with ag.connect("bob") as conn, pytest.raises(errors.InsufficientPrivilege) as info:
        psycopg.ClientCursor(conn).execute("DELETE FROM public.apv_reason1 WHERE id = 1")
    assert "reason is required" in str(info.value) and "/* reason:" in (info.value.diag.message_hint or "")
    rid = refused(ag, "bob", "/* reason: INC-1234 */ DELETE FROM public.apv_reason1 WHERE id = 1")
    with ag.api("carol") as api:
        assert api.get(f"/v1/reviews/{rid}").json()["reason"] == "INC-1234"


def test_break_glass_needs_a_reason_and_is_loud(approvals_gateway: ApprovalsGateway, receiver: Any) -> None:
    ag = approvals_gateway
    with ag.api("admin") as api:
        r = api.put("/v1/webhooks/glass-only", json={"url": receiver.url, "events": ["review.created"]})
        assert r.status_code in (200, 201), r.text
    table(ag, "apv_glass1")
    rid = refused(ag, "bob", "DELETE FROM public.apv_glass1 WHERE id = 1")
    no_reason = vote(ag, "bob", rid, break_glass=True)
    assert no_reason.status_code == 400 and no_reason.json()["type"] == "urn:pgward:problem:reason-required"
    glass = vote(ag, "bob", rid, break_glass=True, comment="INC-9: checkout is down")
    assert (
        glass.status_code == 200
        and glass.json()["state"] == "approved"
        and glass.json()["break_glass"] is True
    )
    assert runs(ag, "bob", "DELETE FROM public.apv_glass1 WHERE id = 1") == 1
    # Sent to the endpoint although it subscribed only to review.created.
    import json

    hits = receiver.wait_for(lambda r: b"break_glass.used" in r.body and rid.encode() in r.body)
    event = json.loads(hits[0].body)
    assert event["type"] == "break_glass.used" and event["data"]["comment"] == "INC-9: checkout is down"
    with ag.api("admin") as api:
        api.delete("/v1/webhooks/glass-only")


def test_unbounded_delete_guardrail_sends_for_review(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_all1")
    rid = refused(ag, "bob", "DELETE FROM public.apv_all1")
    with ag.api("carol") as api:
        shown = api.get(f"/v1/reviews/{rid}").json()
    assert shown["rule"] == "guardrail:no_unbounded_write" and "every row" in shown["what"]
    vote(ag, "carol", rid)
    assert runs(ag, "bob", "DELETE FROM public.apv_all1") == 3


def test_deny_rules_win_and_no_review_is_opened(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_secret1")
    with ag.connect("bob") as conn, pytest.raises(errors.InsufficientPrivilege) as info:
        psycopg.ClientCursor(conn).execute("DROP TABLE public.apv_secret1")
    assert "denied by policy" in str(info.value) and "review" not in (info.value.diag.message_detail or "")


def test_unknown_review_is_404(approvals_gateway: ApprovalsGateway) -> None:
    with approvals_gateway.api("carol") as api:
        assert api.get(f"/v1/reviews/{uuid.uuid4()}").status_code == 404
        assert api.post("/v1/reviews/not-a-uuid/approve").status_code == 404
        assert api.get("/v1/reviews").status_code == 200
    with approvals_gateway.gw.api() as anonymous:
        anonymous.headers.pop("Authorization")
        assert anonymous.get("/v1/reviews").status_code == 401


def test_cli_lists_shows_and_decides(approvals_gateway: ApprovalsGateway) -> None:
    import json
    import subprocess

    from tests.fixtures.gateway import PGWARD

    ag = approvals_gateway
    table(ag, "apv_del_cli")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del_cli WHERE id = 1")

    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**ag.gw.env, "PGWARD_API_URL": ag.gw.api_url, "PGWARD_TOKEN": ag.tokens[who], "COLUMNS": "300"}
        return subprocess.run(
            [*PGWARD, "approvals", *args], env=env, capture_output=True, text=True, timeout=60
        )

    listed = cli("carol", "list")
    assert (
        listed.returncode == 0 and rid in listed.stdout and "DELETE FROM public.apv_del_cli" in listed.stdout
    )
    shown = cli("carol", "show", rid)
    assert json.loads(shown.stdout)["state"] == "pending"
    own = cli("bob", "approve", rid)
    assert own.returncode == 1 and "nobody approves their own request" in own.stderr.replace("\n", " ")
    approved = cli("carol", "approve", rid, "--comment", "fine")
    assert approved.returncode == 0 and "approved (1/1 approvals)" in approved.stdout
    again = cli("dave", "deny", rid)
    assert again.returncode == 1 and "already approved" in again.stderr


def test_requests_votes_and_executions_are_in_the_audit(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_two_audit")
    sql = "DELETE FROM public.apv_two_audit WHERE id = 2"
    rid = refused(ag, "bob", sql)
    vote(ag, "carol", rid, comment="one")
    vote(ag, "dave", rid, comment="two")
    assert runs(ag, "bob", sql) == 1
    with ag.api("admin") as api:
        items = api.get("/v1/audit/events", params={"kind": "approval", "limit": 1000}).json()["items"]
    mine = [e for e in items if e.get("review") == rid]
    assert [e["action"] for e in mine] == [
        "review.created",
        "review.vote",
        "review.vote",
        "review.decided",
        "review.executed",
    ]
    assert [e["identity"]["username"] for e in mine] == ["bob", "carol", "dave", "dave", "bob"]
    assert {e["statement"] for e in mine} == {sql}
    # Linked to the session that asked: the review carries its session UUID.
    assert mine[0]["session"] and mine[1]["comment"] == "one" and mine[3]["decision"] == "approved"
