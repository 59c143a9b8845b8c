"""`pgward plan`, `pgward apply` and `pgward policy test` as a pipeline runs them, against a real server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from control_plane.demo.run import DEMO_POLICIES
from tests.fixtures.gateway import PGWARD
from tests.policy.conftest import PolicyGateway

POLICY = """
kind: Policy
name: cli-test-readers
subjects: {groups: [cli-readers]}
connections: [shop]
rules:
  - allow: [read]
    tables: ["shop.{table}"]
---
kind: ServiceIdentity
name: cli-test-bot
groups: [cli-readers]
"""

TESTS = """
kind: PolicyTest
name: demo
tests:
  - name: alice reads orders
    identity: {username: alice, groups: [analysts]}
    connection: shop
    sql: select * from shop.orders
    expect: allow
    policy: analysts-read-shop
    rule: read-shop
  - identity: {username: alice, groups: [analysts]}
    connection: shop
    sql: delete from shop.orders where id = 1
    expect: deny
    sqlstate: "42501"
  - identity: {username: mallory, groups: []}
    connection: shop
    sql: select 1
    expect: no_session
  - name: ci truncates (needs approval)
    identity: {username: ci, groups: [ci], kind: service}
    connection: shop
    sql: truncate shop.orders
    expect: deny
    message_contains: requires approval
"""


def pgward(gw: PolicyGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PGWARD, *args, "--api-url", gw.gw.api_url, "--token", gw.gw.admin_token],
        env=gw.gw.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_apply_is_idempotent(policy_gateway: PolicyGateway, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.replace("{table}", "orders"))
    plan = pgward(policy_gateway, "plan", "-f", str(tmp_path))
    assert plan.returncode == 2, plan.stderr
    assert "+ policy cli-test-readers" in plan.stdout and "+ service identity cli-test-bot" in plan.stdout
    # Policies on the server that the files do not name are shown, never deleted without --prune.
    assert "? policy analysts-read-shop" in plan.stdout
    assert pgward(policy_gateway, "plan", "-f", str(tmp_path)).returncode == 2  # plan changed nothing

    applied = pgward(policy_gateway, "apply", "-f", str(tmp_path))
    assert applied.returncode == 0, applied.stderr
    assert "API key (shown once) pgw_" in applied.stdout
    again = pgward(policy_gateway, "apply", "-f", str(tmp_path))
    assert again.returncode == 0 and "no changes" in again.stderr
    assert pgward(policy_gateway, "plan", "-f", str(tmp_path)).returncode == 0

    (tmp_path / "p.yaml").write_text(POLICY.replace("{table}", "customers"))
    changed = pgward(policy_gateway, "plan", "-f", str(tmp_path))
    assert changed.returncode == 2 and "~ policy cli-test-readers (changes: rules)" in changed.stdout
    assert pgward(policy_gateway, "apply", "-f", str(tmp_path)).returncode == 0
    with policy_gateway.gw.api() as api:
        versions = api.get("/v1/policies/cli-test-readers/versions").json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    policy_gateway.gw.delete_policy("cli-test-readers")


def test_plan_errors_exit_1(policy_gateway: PolicyGateway, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "kind: Policy\nname: bad\nsubjects: {groups: [x]}\nconnections: [shop]\nrules:\n  - allow: [raed]\n"
    )
    r = pgward(policy_gateway, "plan", "-f", str(tmp_path))
    assert r.returncode == 1 and "/rules/0/allow/0" in r.stderr
    r = subprocess.run(
        [
            *PGWARD,
            "plan",
            "-f",
            str(DEMO_POLICIES),
            "--api-url",
            policy_gateway.gw.api_url,
            "--token",
            "pgw_000000000000_nope",
        ],
        env=policy_gateway.gw.env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "401" in r.stderr


def test_policy_test_against_files_and_server(policy_gateway: PolicyGateway, tmp_path: Path) -> None:
    tests = tmp_path / "tests.yaml"
    tests.write_text(TESTS)
    for against in ("files", "server"):
        r = subprocess.run(
            [
                *PGWARD,
                "policy",
                "test",
                "-f",
                str(tests),
                "--policies",
                str(DEMO_POLICIES),
                "--against",
                against,
                "--api-url",
                policy_gateway.gw.api_url,
                "--token",
                policy_gateway.gw.admin_token,
            ],
            env=policy_gateway.gw.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "PASS alice reads orders: allow" in r.stdout and "4 passed, 0 failed" in r.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(TESTS.replace("expect: no_session", "expect: allow"))
    r = subprocess.run(
        [*PGWARD, "policy", "test", "-f", str(wrong), "--policies", str(DEMO_POLICIES)],
        env=policy_gateway.gw.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "FAIL" in r.stdout and "expected allow, got no_session" in r.stdout
