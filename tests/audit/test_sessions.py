"""Session start and end and denied logins are on record with the identity, and the audit API is
for admins and auditors only, filters like the contract says, and audits its own reads."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from tests.audit.conftest import AuditGateway, wait_for


def test_session_start_and_end_carry_the_identity(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    with psycopg.connect(gw.conninfo(application_name="audit-session"), password=gw.ci_token) as conn:
        conn.execute("select 1")
    starts = wait_for(lambda: audit_gateway.events(kind="session_start", identity="ci"))
    assert starts
    start = starts[-1]
    assert start["identity"]["username"] == "ci"
    assert start["identity"]["subject"] and start["identity"]["credential"] == "api_key"
    assert start["identity"]["groups"] == ["ci"] and start["identity"]["kind"] == "service"
    assert start["connection"] == "shop" and start["client_addr"].startswith("127.0.0.1:")
    assert start["policy_version"]
    ends = wait_for(lambda: audit_gateway.events(kind="session_end", session=start["session"]))
    assert len(ends) == 1 and ends[0]["reason"] == "client closed"


def test_denied_login_is_on_record(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.conninfo(user="mallory"), password="pgw_not_a_real_key_at_all_0000")
    denied = wait_for(
        lambda: [e for e in audit_gateway.events(kind="login_denied") if e.get("user") == "mallory"]
    )
    assert denied and denied[-1]["decision"] == "deny"
    assert denied[-1]["sqlstate"] == "28P01" and denied[-1]["connection"] == "shop"


def test_only_admins_and_auditors_read_the_audit(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    with httpx.Client(base_url=gw.api_url, timeout=30) as client:
        assert client.get("/v1/audit/events").status_code == 401
        r = client.get("/v1/audit/events", headers={"Authorization": f"Bearer {gw.ci_token}"})
        assert r.status_code == 403 and "auditors" in r.json()["detail"]
        for token in (gw.admin_token, audit_gateway.auditor_token):
            r = client.get("/v1/audit/events", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and set(r.json()) == {"items", "next_cursor"}


def test_reading_the_audit_is_audited(audit_gateway: AuditGateway) -> None:
    audit_gateway.events(connection="shop", decision="deny")
    reads = audit_gateway.events(kind="access")
    mine = [e for e in reads if e["identity"]["username"] == "auditor" and e["action"] == "audit.search"]
    assert any(e["detail"]["filters"] == {"connection": "shop", "decision": "deny"} for e in mine)


def test_cursor_pagination_and_filters(audit_gateway: AuditGateway) -> None:
    gw = audit_gateway.gw
    for _ in range(3):
        with psycopg.connect(gw.conninfo(), password=gw.ci_token) as conn:
            conn.execute("select 1")
    wait_for(lambda: len(audit_gateway.events(kind="session_end")) >= 3)
    with httpx.Client(base_url=gw.api_url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {audit_gateway.auditor_token}"}
        first = client.get("/v1/audit/events", params={"limit": 2}, headers=headers).json()
        assert len(first["items"]) == 2 and first["next_cursor"]
        second = client.get(
            "/v1/audit/events", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers
        ).json()
        assert second["items"][0]["id"] > first["items"][-1]["id"]
        bad = client.get("/v1/audit/events", params={"decision": "maybe"}, headers=headers)
        assert bad.status_code in (400, 422)
        future = client.get("/v1/audit/events", params={"since": "2999-01-01T00:00:00Z"}, headers=headers)
        assert future.json()["items"] == []


def test_the_store_verifies_after_live_traffic(audit_gateway: AuditGateway) -> None:
    r = audit_gateway.store.pgward("audit", "checkpoint")
    assert r.returncode == 0, r.stderr
    v = audit_gateway.store.pgward("audit", "verify")
    assert v.returncode == 0, v.stderr
