"""Fixtures for policy tests: the API on a real store, and a gateway with the demo policies applied."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane.demo.run import DEMO_POLICIES
from control_plane.pgserver import LocalPostgres
from tests.api.conftest import admin_headers, app, client, user_headers  # noqa: F401
from tests.fixtures.gateway import PGWARD, Gateway, start_gateway, stop_gateway
from tests.fixtures.postgres import TargetDatabase
from tests.store.fixtures import *  # noqa: F403


@dataclass
class PolicyGateway:
    """A gateway whose policies are the demo's, with one service identity per demo role."""

    gw: Gateway
    tokens: dict[str, str]

    def identity(self, name: str, *groups: str) -> str:
        if name not in self.tokens:
            args = [*PGWARD, "identities", "create", name]
            for group in groups:
                args += ["--group", group]
            r = subprocess.run(args, env=self.gw.env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            self.tokens[name] = r.stdout.strip()
        return self.tokens[name]

    def conninfo(self, name: str, **extra: str) -> str:
        return self.gw.conninfo(user=name, **extra)


def apply_demo_policies(gw: Gateway) -> None:
    r = subprocess.run(
        [*PGWARD, "apply", "-f", str(DEMO_POLICIES), "--api-url", gw.api_url, "--token", gw.admin_token],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="session")
def policy_gateway(
    pg_base_dir: Path, store_pg: LocalPostgres, target_pg: TargetDatabase
) -> Iterator[PolicyGateway]:
    # A short poll interval: tests of changes made by another process wait for it.
    gw = start_gateway(
        pg_base_dir / "policy-gateway",
        store_pg,
        target_pg,
        ci_policy=False,
        PGWARD_POLICY_POLL_INTERVAL="0.5",
    )
    try:
        apply_demo_policies(gw)
        pg = PolicyGateway(gw, {"ci": gw.ci_token})
        pg.identity("analyst", "analysts")
        pg.identity("dba", "dba")
        pg.identity("agent", "agents")
        pg.identity("nobody", "strangers")
        yield pg
    finally:
        stop_gateway(gw)
