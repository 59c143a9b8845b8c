"""Fixtures for audit tests: a fresh store with records written by the real audit writer, the
`pgward audit` command against it, and direct (superuser) access for tampering."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from control_plane.audit.writer import AuditWriter
from control_plane.config import Settings
from control_plane.pgserver import LocalPostgres
from control_plane.store.db import create_engine
from tests.fixtures.gateway import Gateway, start_gateway, stop_gateway
from tests.fixtures.postgres import TargetDatabase

PGWARD = [sys.executable, "-m", "control_plane.cli"]


@dataclass
class AuditStore:
    url: str
    secret_key: str

    def settings(self, **extra: Any) -> Settings:
        return Settings(database_url=self.url, secret_key=self.secret_key, audit_flush_interval=0, **extra)

    def env(self) -> dict[str, str]:
        # A wide terminal: rich must not wrap the messages tests look for.
        return {
            **os.environ,
            "PGWARD_DATABASE_URL": self.url,
            "PGWARD_SECRET_KEY": self.secret_key,
            "COLUMNS": "500",
        }

    def pgward(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PGWARD, *args], env=self.env(), capture_output=True, text=True, timeout=120)

    def write(self, count: int, *, checkpoint: bool = True) -> str:
        """`count` statement records in a new stream (a writer's life); returns the stream id."""

        async def main() -> str:
            engine = create_engine(self.url)
            writer = AuditWriter(self.settings(), engine)
            await writer.start()
            try:
                for i in range(1, count + 1):
                    writer.append(
                        {
                            "kind": "statement",
                            "session": "s-1",
                            "connection": "shop",
                            "identity": {"subject": "service:ci", "username": "ci"},
                            "statement": f"select {i}",
                            "decision": "allow",
                            "class": "read",
                            "rows": 1,
                        }
                    )
                await writer.flush()
                if checkpoint:
                    await writer.checkpoint()
            finally:
                # No closing checkpoint: tests decide which heads are signed.
                writer._checkpointed_seq = writer.committed_seq
                await writer.close()
                await engine.dispose()
            return writer.stream

        return asyncio.run(main())

    def sql(self, *statements: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Run statements as the store's superuser, with the append-only trigger disabled."""
        conninfo = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            try:
                rows: list[tuple[Any, ...]] = []
                for s in statements:
                    cur = conn.execute(s, params)  # type: ignore[arg-type]
                    if cur.description:
                        rows = cur.fetchall()
                return rows
            finally:
                conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")


@pytest.fixture
def audit_store(fresh_store_url: str) -> Iterator[AuditStore]:
    yield AuditStore(fresh_store_url, Fernet.generate_key().decode())


@dataclass
class AuditGateway:
    gw: Gateway
    auditor_token: str
    store: AuditStore

    def events(self, token: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every event matching `filters`, following next_cursor, read through the API."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 200, **filters}
        with httpx.Client(base_url=self.gw.api_url, timeout=30) as client:
            while True:
                r = client.get(
                    "/v1/audit/events",
                    params=params,
                    headers={"Authorization": f"Bearer {token or self.auditor_token}"},
                )
                assert r.status_code == 200, r.text
                page = r.json()
                items.extend(page["items"])
                if not page["next_cursor"]:
                    return items
                params["cursor"] = page["next_cursor"]

    def session_events(self, marker: str, count: int) -> list[dict[str, Any]]:
        """The statement records of the session that ran a statement containing `marker`, once
        at least `count` of them are committed."""

        def get() -> list[dict[str, Any]]:
            found = self.events(kind="statement", q=marker)
            if not found:
                return []
            events = self.events(kind="statement", session=found[0]["session"])
            return events if len(events) >= count else []

        events = wait_for(get)
        assert events, f"no {count} statement records for the session of {marker!r}"
        return list(events)


def wait_for(get: Any, timeout: float = 20.0) -> Any:
    """Poll until `get()` is truthy (records are committed in batches, asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def start_audit_gateway(
    base: Path, store_pg: LocalPostgres, target: TargetDatabase, **env: str
) -> AuditGateway:
    gw = start_gateway(base, store_pg, target, PGWARD_AUDIT_FLUSH_INTERVAL="0.02", **env)
    r = subprocess.run(
        [*PGWARD, "identities", "create", "auditor", "--group", "auditors"],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    store = AuditStore(gw.env["PGWARD_DATABASE_URL"], gw.env["PGWARD_SECRET_KEY"])
    return AuditGateway(gw, r.stdout.strip(), store)


@pytest.fixture(scope="session")
def audit_gateway(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase
) -> Iterator[AuditGateway]:
    ag = start_audit_gateway(
        pg_base_dir / "audit-gateway", store_pg, target_pg, PGWARD_AUDIT_PARAMETERS="true"
    )
    try:
        yield ag
    finally:
        stop_gateway(ag.gw)
