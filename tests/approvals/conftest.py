"""A gateway with approval rules, its identities (requesters, approvers, an admin) and a webhook receiver.

Identities are service identities (API keys) so every test is independent of an OIDC provider:
`bob` (dba, admins — also an approver group, to prove admins cannot approve their own requests),
`carol` and `dave` (approvers), `erin` (ops: requests just-in-time access), `frank` (dba, nothing else).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from control_plane.approvals.signing import new_secret
from control_plane.pgserver import LocalPostgres
from tests.fixtures.gateway import PGWARD, Gateway, start_gateway, stop_gateway
from tests.fixtures.postgres import TargetDatabase

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test value
SLACK_USERS = {"UCAROL": "carol", "UERIN": "erin", "UNOBODY": "nobody-known"}
CALLBACK_SECRET = new_secret()

DEFERRED = {"mode": "deferred", "approvers": ["approvers"], "valid_for": "10m"}
POLICIES: list[dict[str, Any]] = [
    {
        "kind": "Policy",
        "name": "apv-dba",
        "subjects": {"groups": ["dba"]},
        "connections": ["shop"],
        "approval": DEFERRED,
        "rules": [
            {"name": "everything", "allow": ["all"]},
            {"name": "destructive", "require_approval": ["destructive_ddl"]},
            {
                "name": "two-approvers",
                "require_approval": ["write"],
                "tables": ["public.apv_two*"],
                "approval": {**DEFERRED, "approvals_required": 2},
            },
            {
                "name": "with-reason",
                "require_approval": ["write"],
                "tables": ["public.apv_reason*"],
                "approval": {**DEFERRED, "reason_required": True},
            },
            {
                "name": "glass",
                "require_approval": ["write"],
                "tables": ["public.apv_glass*"],
                "approval": {**DEFERRED, "break_glass": True},
            },
            {
                "name": "quick",
                "require_approval": ["write"],
                "tables": ["public.apv_quick*"],
                "approval": {**DEFERRED, "timeout": "1s"},
            },
            {"name": "writes", "require_approval": ["write"], "tables": ["public.apv_del*"]},
            {
                "name": "held",
                "require_approval": ["write"],
                "tables": ["public.apv_held*"],
                "approval": {"mode": "held", "approvers": ["approvers"], "timeout": "10m"},
            },
            {
                "name": "held-quick",
                "require_approval": ["write"],
                "tables": ["public.apv_hquick*"],
                "approval": {"mode": "held", "approvers": ["approvers"], "timeout": "2s"},
            },
            {"name": "no-secrets", "deny": ["all"], "tables": ["public.apv_secret*"]},
        ],
        "guardrails": {"no_unbounded_write": "require_approval"},
    },
    {
        "kind": "Policy",
        "name": "apv-ops",
        "subjects": {"groups": ["ops"]},
        "connections": ["shop"],
        "rules": [
            {"name": "read", "allow": ["read"], "tables": ["public.*"]},
            {"name": "log", "allow": ["write"], "tables": ["public.apv_ops_log"]},
        ],
    },
    {
        "kind": "Policy",
        "name": "apv-jit-write",
        "description": "Write to public.apv_jit, only on request",
        "subjects": {},
        "connections": ["shop"],
        "access_requests": {
            "requesters": {"groups": ["ops"]},
            "approvers": ["approvers"],
            "max_duration": "1h",
        },
        "rules": [{"name": "write-jit", "allow": ["write"], "tables": ["public.apv_jit"]}],
    },
    {
        "kind": "Policy",
        "name": "apv-jit-quick",
        "subjects": {},
        "connections": ["shop"],
        "access_requests": {
            "requesters": {"groups": ["ops"]},
            "approvers": ["approvers"],
            "timeout": "1s",
            "reason_required": False,
        },
        "rules": [{"allow": ["write"], "tables": ["public.apv_jit"]}],
    },
    {
        "kind": "Policy",
        "name": "apv-jit-glass",
        "subjects": {},
        "connections": ["shop"],
        "access_requests": {
            "requesters": {"groups": ["ops"]},
            "approvers": ["approvers"],
            "break_glass": True,
        },
        "rules": [{"allow": ["write"], "tables": ["public.apv_jit_glass"]}],
    },
]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server in the test process that records what it receives; `fail_next` answers 500."""

    url: str
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(
        self, predicate: Callable[[Received], bool], count: int = 1, timeout: float = 30
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hits = [r for r in self.received if predicate(r)]
            if len(hits) >= count:
                return hits
            time.sleep(0.05)
        raise AssertionError(
            f"the receiver did not get {count} matching deliveries; got {len(self.received)} in all"
        )


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            r = box["r"]
            with r.lock:
                failing = r.fail_next > 0
                if failing:
                    r.fail_next -= 1
                r.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box["r"] = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box["r"]
    finally:
        server.shutdown()


@dataclass
class ApprovalsGateway:
    gw: Gateway
    tokens: dict[str, str]
    target: TargetDatabase

    def identity(self, name: str, *groups: str) -> str:
        if name not in self.tokens:
            args = [*PGWARD, "identities", "create", name]
            for group in groups:
                args += ["--group", group]
            r = subprocess.run(args, env=self.gw.env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            self.tokens[name] = r.stdout.strip()
        return self.tokens[name]

    def api(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.gw.api_url, headers={"Authorization": f"Bearer {self.tokens[name]}"}, timeout=30
        )

    def connect(self, name: str, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.gw.conninfo(user=name), password=self.tokens[name], autocommit=True, **kwargs
        )

    def psql(self, name: str, *sql: str) -> subprocess.CompletedProcess[str]:
        return self.gw.psql(*sql, password=self.tokens[name], conninfo=self.gw.conninfo(user=name))

    def owner(self) -> psycopg.Connection[Any]:
        """The target directly, as the role pgward logs in as (to set up and check tables)."""
        return psycopg.connect(self.target.owner_dsn, autocommit=True)


@pytest.fixture(scope="session")
def approvals_gateway(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase, receiver: Receiver
) -> Iterator[ApprovalsGateway]:
    gw = start_gateway(
        pg_base_dir / "approvals-gateway",
        store_pg,
        target_pg,
        ci_policy=False,
        PGWARD_POLICY_POLL_INTERVAL="0.5",
        PGWARD_APPROVALS_SWEEP_INTERVAL="0.2",
        PGWARD_WEBHOOK_RETRY_BASE="0.2",
        PGWARD_WEBHOOK_MAX_ATTEMPTS="4",
        PGWARD_SLACK_SIGNING_SECRET=SLACK_SECRET,
        PGWARD_SLACK_USERS=json.dumps(SLACK_USERS),
        PGWARD_DECISION_SECRETS=json.dumps({"ops-bot": CALLBACK_SECRET}),
        PGWARD_PUBLIC_URL="https://pgward.example.test",
    )
    try:
        for policy in POLICIES:
            gw.put_policy(policy)
        ag = ApprovalsGateway(gw, {"admin": gw.admin_token}, target_pg)
        ag.identity("bob", "dba", "admins", "approvers")
        ag.identity("frank", "dba")
        ag.identity("carol", "approvers")
        ag.identity("dave", "approvers")
        ag.identity("erin", "ops")
        yield ag
    finally:
        stop_gateway(gw)
