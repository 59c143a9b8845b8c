"""Webhooks out (Standard Webhooks signatures verified with the `standardwebhooks` library, retries,
the delivery log, redelivery, the Slack format) and decisions in (Slack interactions, signed callbacks)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from control_plane.approvals.signing import new_secret
from tests.approvals.conftest import CALLBACK_SECRET, SLACK_SECRET, ApprovalsGateway, Receiver
from tests.approvals.test_reviews import refused, table


def put_hook(ag: ApprovalsGateway, name: str, **body: Any) -> dict[str, Any]:
    with ag.api("admin") as api:
        r = api.put(f"/v1/webhooks/{name}", json=body)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())


def test_deliveries_are_signed_per_standard_webhooks(
    approvals_gateway: ApprovalsGateway, receiver: Receiver
) -> None:
    ag = approvals_gateway
    hook = put_hook(ag, "std", url=receiver.url, events=["review.created", "review.decided"])
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    with ag.api("admin") as api:
        assert api.get("/v1/webhooks/std").json()["secret"] is None  # shown once
    table(ag, "apv_del_hook")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del_hook WHERE id = 1")
    [hit] = receiver.wait_for(lambda r: rid.encode() in r.body and b"review.created" in r.body)
    payload = Webhook(secret).verify(hit.body, hit.headers)
    assert payload["type"] == "review.created"
    assert payload["data"]["sql"] == "DELETE FROM public.apv_del_hook WHERE id = 1"
    assert payload["data"]["url"] == f"https://pgward.example.test/v1/reviews/{rid}"
    # A wrong secret, a changed body and a stale timestamp do not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(hit.body, hit.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(hit.body.replace(b"DELETE", b"SELECT"), hit.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(hit.body, {**hit.headers, "webhook-timestamp": str(int(time.time()) - 3600)})
    with ag.api("carol") as api:
        api.post(f"/v1/reviews/{rid}/deny", json={"comment": "no"})
    [decided] = receiver.wait_for(lambda r: rid.encode() in r.body and b"review.decided" in r.body)
    assert Webhook(secret).verify(decided.body, decided.headers)["data"]["comment"] == "no"
    with ag.api("admin") as api:
        api.delete("/v1/webhooks/std")


def test_failed_deliveries_are_retried_logged_and_redelivered(
    approvals_gateway: ApprovalsGateway, receiver: Receiver
) -> None:
    ag = approvals_gateway
    hook = put_hook(ag, "flaky", url=receiver.url, events=["review.created"])
    receiver.fail_next = 2
    table(ag, "apv_del_retry")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del_retry WHERE id = 1")
    hits = receiver.wait_for(lambda r: rid.encode() in r.body, count=3)
    # Every attempt carries the same webhook-id (receivers dedupe on it) and a valid signature.
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    for h in hits:
        Webhook(hook["secret"]).verify(h.body, h.headers)
    with ag.api("admin") as api:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            [log] = [
                d
                for d in api.get("/v1/webhooks/flaky/deliveries").json()["items"]
                if d["body"]["data"]["id"] == rid
            ]
            if log["state"] == "delivered":
                break
            time.sleep(0.1)
        assert log["state"] == "delivered" and log["attempts"] == 3 and log["last_status"] == 204
        again = api.post(f"/v1/webhooks/flaky/deliveries/{log['id']}/redeliver")
        assert again.status_code == 202, again.text
    receiver.wait_for(lambda r: r.headers["webhook-id"] == log["message_id"], count=4)
    with ag.api("admin") as api:
        api.delete("/v1/webhooks/flaky")


def test_unreachable_endpoint_does_not_slow_the_gateway(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    put_hook(ag, "black-hole", url="http://10.255.255.1:9/never", events=["*"])
    table(ag, "apv_del_slow")
    try:
        rid = refused(ag, "bob", "DELETE FROM public.apv_del_slow WHERE id = 1")
        # The review exists and the session keeps working while the delivery is still pending.
        with ag.connect("bob") as conn:
            assert conn.execute("SELECT count(*) FROM public.apv_del_slow").fetchone() == (3,)
        with ag.api("admin") as api:
            items = api.get("/v1/webhooks/black-hole/deliveries").json()["items"]
            assert any(d["body"]["data"]["id"] == rid and d["state"] == "pending" for d in items)
    finally:
        with ag.api("admin") as api:
            api.delete("/v1/webhooks/black-hole")


def test_slack_format_has_buttons(approvals_gateway: ApprovalsGateway, receiver: Receiver) -> None:
    ag = approvals_gateway
    put_hook(ag, "slack", url=receiver.url, events=["review.created"], format="slack")
    table(ag, "apv_del_slack")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del_slack WHERE id = 1")
    [hit] = receiver.wait_for(lambda r: b'"blocks"' in r.body and rid.encode() in r.body)
    message = json.loads(hit.body)
    actions = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    assert [(a["action_id"], a["value"]) for a in actions] == [
        ("approve", f"review:{rid}"),
        ("deny", f"review:{rid}"),
    ]
    with ag.api("admin") as api:
        api.delete("/v1/webhooks/slack")


def slack_post(
    ag: ApprovalsGateway, payload: dict[str, Any], *, secret: str = SLACK_SECRET, ts: int | None = None
) -> Any:
    """Sign as Slack does (https://api.slack.com/authentication/verifying-requests-from-slack)."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(ts if ts is not None else int(time.time()))
    base = b"v0:" + timestamp.encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return (
        httpx.post(
            f"{ag.gw.api_url}/v1/integrations/slack/interactions",
            content=body,
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-slack-request-timestamp": timestamp,
                "x-slack-signature": signature,
            },
            timeout=30,
        ),
        body,
        timestamp,
        signature,
    )


def press(user: str, action: str, value: str) -> dict[str, Any]:
    return {"type": "block_actions", "user": {"id": user}, "actions": [{"action_id": action, "value": value}]}


def test_slack_interactions(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_del_si")
    rid = refused(ag, "bob", "DELETE FROM public.apv_del_si WHERE id = 1")
    with ag.api("carol") as api:
        api.get("/v1/reviews")  # carol has signed in: pgward knows her groups
    with ag.api("erin") as api:
        api.get("/v1/reviews")
    wrong, *_ = slack_post(ag, press("UCAROL", "approve", f"review:{rid}"), secret="not-the-secret")
    assert wrong.status_code == 401
    stale, *_ = slack_post(ag, press("UCAROL", "approve", f"review:{rid}"), ts=int(time.time()) - 600)
    assert stale.status_code == 401
    not_approver, *_ = slack_post(ag, press("UERIN", "approve", f"review:{rid}"))
    assert not_approver.status_code == 200 and "may not decide" in not_approver.json()["text"]
    unknown, *_ = slack_post(ag, press("UNOBODY", "approve", f"review:{rid}"))
    assert "has not seen" in unknown.json()["text"]
    unmapped, *_ = slack_post(ag, press("USTRANGER", "approve", f"review:{rid}"))
    assert "not mapped" in unmapped.json()["text"]
    ok, body, timestamp, signature = slack_post(ag, press("UCAROL", "approve", f"review:{rid}"))
    assert ok.status_code == 200 and "now approved" in ok.json()["text"], ok.text
    # The same request again (a replay inside the time window) is refused.
    replay = httpx.post(
        f"{ag.gw.api_url}/v1/integrations/slack/interactions",
        content=body,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": timestamp,
            "x-slack-signature": signature,
        },
        timeout=30,
    )
    assert replay.status_code == 409 and replay.json()["type"] == "urn:pgward:problem:replayed"
    with ag.api("carol") as api:
        review = api.get(f"/v1/reviews/{rid}").json()
    assert review["state"] == "approved" and review["votes"][0]["via"] == "slack"
    with ag.connect("bob") as conn:
        psycopg.ClientCursor(conn).execute("DELETE FROM public.apv_del_si WHERE id = 1")
        assert conn.execute("SELECT count(*) FROM public.apv_del_si").fetchone() == (2,)


def callback(
    ag: ApprovalsGateway,
    body: dict[str, Any],
    *,
    secret: str = CALLBACK_SECRET,
    msg_id: str | None = None,
    when: datetime | None = None,
) -> tuple[Any, str]:
    data = json.dumps(body)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, data)
    response = httpx.post(
        f"{ag.gw.api_url}/v1/integrations/ops-bot/decisions",
        content=data,
        headers={
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        },
        timeout=30,
    )
    return response, msg_id


def test_signed_decision_callback(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_two_cb")
    rid = refused(ag, "bob", "DELETE FROM public.apv_two_cb WHERE id = 1")
    with ag.api("dave") as api:
        api.get("/v1/reviews")
    decision = {
        "kind": "review",
        "id": rid,
        "decision": "approve",
        "decider": "carol",
        "comment": "from the bot",
    }
    wrong, _ = callback(ag, decision, secret=new_secret())
    assert wrong.status_code == 401
    stale, _ = callback(ag, decision, when=datetime.now(UTC) - timedelta(minutes=10))
    assert stale.status_code == 401
    ok, msg_id = callback(ag, decision)
    assert ok.status_code == 200 and ok.json()["state"] == "pending", ok.text  # 1 of 2
    replay, _ = callback(ag, decision, msg_id=msg_id)
    assert replay.status_code == 409 and replay.json()["type"] == "urn:pgward:problem:replayed"
    with ag.api("carol") as api:
        review = api.get(f"/v1/reviews/{rid}").json()
    assert review["approvals"] == 1 and review["state"] == "pending"
    second, _ = callback(ag, {**decision, "decider": "dave"})
    assert second.json()["state"] == "approved"
    with ag.connect("bob") as conn:
        psycopg.ClientCursor(conn).execute("DELETE FROM public.apv_two_cb WHERE id = 1")
        assert conn.execute("SELECT count(*) FROM public.apv_two_cb").fetchone() == (2,)
