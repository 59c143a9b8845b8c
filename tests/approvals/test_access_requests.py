"""Just-in-time access: an approved request grants a policy for its duration; open sessions gain and
then lose the rights without reconnecting, and nothing has to run by hand for the grant to end."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from psycopg import errors

from tests.approvals.conftest import ApprovalsGateway
from tests.fixtures.gateway import PGWARD


def request(ag: ApprovalsGateway, who: str, **body: Any) -> Any:
    with ag.api(who) as api:
        return api.post("/v1/access-requests", json={"connection": "shop", **body})


def test_grant_reaches_open_sessions_and_ends_by_itself(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    with ag.owner() as conn:
        conn.execute("DROP TABLE IF EXISTS public.apv_jit")
        conn.execute("CREATE TABLE public.apv_jit (id int)")
    with ag.connect("erin") as session:
        with pytest.raises(errors.InsufficientPrivilege):
            session.execute("INSERT INTO public.apv_jit VALUES (1)")
        # The CLI, as a person would: pgward request-access … prints the request's id.
        cli = subprocess.run(
            [
                *PGWARD,
                "request-access",
                "--connection",
                "shop",
                "--policy",
                "apv-jit-write",
                "--for",
                "4s",
                "--reason",
                "INC-1234",
                "--api-url",
                ag.gw.api_url,
                "--token",
                ag.tokens["erin"],
            ],
            env=ag.gw.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        rid = cli.stdout.strip()
        with ag.api("carol") as api:
            pending = api.get("/v1/access-requests", params={"state": "pending"}).json()["items"]
            assert rid in [p["id"] for p in pending]
            approved = api.post(f"/v1/access-requests/{rid}/approve", json={"comment": "go"}).json()
        assert approved["state"] == "approved" and approved["ends_at"]
        # The same open session, no reconnect: the approval answered only after this process reloaded.
        session.execute("INSERT INTO public.apv_jit VALUES (1)")
        # The grant ends on its own: the session loses the right without reconnecting.
        # (prepare=False: a statement the driver prepared while the grant was active would be run by
        # Bind/Execute alone, which the gateway does not decide again; see docs/approvals.md.)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                session.execute("INSERT INTO public.apv_jit VALUES (2)", prepare=False)
            except errors.InsufficientPrivilege as exc:
                assert "not allowed" in str(exc)
                break
            time.sleep(0.2)
        else:
            pytest.fail("the grant did not end")
        # And stays ended.
        with pytest.raises(errors.InsufficientPrivilege):
            session.execute("INSERT INTO public.apv_jit VALUES (3)", prepare=False)
    with ag.api("erin") as api:
        mine = api.get(f"/v1/access-requests/{rid}").json()
    deadline = time.monotonic() + 30
    while mine["state"] != "expired" and time.monotonic() < deadline:
        time.sleep(0.1)
        with ag.api("erin") as api:
            mine = api.get(f"/v1/access-requests/{rid}").json()
    assert mine["state"] == "expired"


def test_request_rules(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    no_reason = request(ag, "erin", policy="apv-jit-write", duration="30m")
    assert no_reason.status_code == 400 and no_reason.json()["type"] == "urn:pgward:problem:reason-required"
    too_long = request(ag, "erin", policy="apv-jit-write", duration="2h", reason="x")
    assert too_long.status_code == 400 and "at most 1h" in too_long.json()["detail"]
    not_requester = request(ag, "frank", policy="apv-jit-write", duration="30m", reason="x")
    assert (
        not_requester.status_code == 403
        and not_requester.json()["type"] == "urn:pgward:problem:not-a-requester"
    )
    not_requestable = request(ag, "erin", policy="apv-ops", duration="30m", reason="x")
    assert not_requestable.status_code == 403
    bad = request(ag, "erin", policy="apv-jit-write", duration="soon", reason="x")
    assert bad.status_code == 400
    ok = request(ag, "erin", policy="apv-jit-write", duration="30m", reason="INC-1")
    assert ok.status_code == 201, ok.text
    rid = ok.json()["id"]
    with ag.api("erin") as api:
        own = api.post(f"/v1/access-requests/{rid}/approve")
        assert own.status_code == 403 and own.json()["type"] == "urn:pgward:problem:self-approval"
    with ag.api("frank") as api:
        assert api.post(f"/v1/access-requests/{rid}/approve").status_code == 403
    with ag.api("carol") as api:
        denied = api.post(f"/v1/access-requests/{rid}/deny", json={"comment": "use the runbook"}).json()
    assert denied["state"] == "denied" and denied["comment"] == "use the runbook"


def test_expired_access_request_cannot_be_approved(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    rid = request(ag, "erin", policy="apv-jit-quick", duration="5m").json()["id"]
    with ag.api("carol") as api:
        deadline = time.monotonic() + 30
        while (
            api.get(f"/v1/access-requests/{rid}").json()["state"] == "pending" and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        late = api.post(f"/v1/access-requests/{rid}/approve")
    assert late.status_code == 409 and late.json()["type"] == "urn:pgward:problem:expired", late.text
    with ag.connect("erin") as session, pytest.raises(errors.InsufficientPrivilege):
        session.execute("INSERT INTO public.apv_jit VALUES (7)")


def test_break_glass_access(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    with ag.owner() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.apv_jit_glass (id int)")
    rid = request(ag, "erin", policy="apv-jit-glass", duration="10m", reason="db down").json()["id"]
    with ag.connect("erin") as session:
        with pytest.raises(errors.InsufficientPrivilege):
            session.execute("INSERT INTO public.apv_jit_glass VALUES (1)")
        with ag.api("erin") as api:
            no_reason = api.post(f"/v1/access-requests/{rid}/approve", json={"break_glass": True})
            assert no_reason.status_code == 400
            glass = api.post(
                f"/v1/access-requests/{rid}/approve", json={"break_glass": True, "comment": "pager"}
            )
        assert glass.status_code == 200 and glass.json()["break_glass"] is True
        session.execute("INSERT INTO public.apv_jit_glass VALUES (1)")
