"""`pgward login`, `pgward token` and `pgward connect` against the real OIDC provider and gateway."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.gateway import Gateway
from tests.fixtures.oidc import CLI_CLIENT, OidcProvider

PGWARD = [sys.executable, "-m", "control_plane.cli"]


def _env(config_home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(config_home), "COLUMNS": "300", **extra}


Completed = subprocess.CompletedProcess[Any]


def _pgward(args: list[str], env: dict[str, str], stdin: str | None = None) -> Completed:
    return subprocess.run([*PGWARD, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


def _device_login(provider: OidcProvider, env: dict[str, str], login: str) -> Completed:
    proc = subprocess.Popen(
        [*PGWARD, "login", "--issuer", provider.issuer, "--client-id", CLI_CLIENT,
         "--scope", "openid offline_access profile groups pgward"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"pgward login ended early: {seen}"
        seen += line
        match = re.search(r"or open (\S+user_code=\S+)", line)
        url = match.group(1) if match else None
    assert url is not None and "enter the code" in seen, seen
    provider.approve_device(url, login)
    out, rest = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, seen + rest)


def test_token_without_login_fails_clearly(tmp_path: Path) -> None:
    r = _pgward(["token"], _env(tmp_path))
    assert r.returncode == 1 and r.stdout == ""
    assert "not logged in" in r.stderr and "pgward login" in r.stderr


def test_device_login_token_refresh_and_connect(
    tmp_path: Path, oidc_provider: OidcProvider, oidc_gateway: Gateway
) -> None:
    env = _env(tmp_path)
    login = _device_login(oidc_provider, env, "alice")
    assert login.returncode == 0, login.stderr
    assert "logged in" in login.stderr and "alice" in login.stderr
    cache = tmp_path / "pgward" / "tokens.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    r = _pgward(["token"], env)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.count(".") == 2 and token not in login.stderr and token not in login.stdout
    with psycopg.connect(oidc_gateway.conninfo(user="alice"), password=token) as conn:
        assert conn.execute("select count(*) from shop.orders").fetchone() is not None
    assert _pgward(["token"], env).stdout.strip() == token  # cached while valid

    # Expire the cached token: the next `pgward token` refreshes it with the refresh token.
    data = json.loads(cache.read_text())
    entry = data["issuers"][oidc_provider.issuer]
    refresh_before = entry["refresh_token"]
    entry["expires_at"] = time.time() - 10
    cache.write_text(json.dumps(data))
    r = _pgward(["token"], env)
    assert r.returncode == 0, r.stderr
    refreshed = r.stdout.strip()
    assert refreshed != token
    assert json.loads(cache.read_text())["issuers"][oidc_provider.issuer]["refresh_token"] != refresh_before
    with psycopg.connect(oidc_gateway.conninfo(user="alice"), password=refreshed) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    # `pgward connect` execs psql with the token in PGPASSWORD and verify-full TLS.
    r = _pgward(
        ["connect", "shop", "--host", oidc_gateway.host, "--port", str(oidc_gateway.port),
         "--sslrootcert", str(oidc_gateway.sslrootcert)],
        env, stdin="select 'via-' || current_database();\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "via-shop" in r.stdout
    assert token not in oidc_gateway.log() and refreshed not in oidc_gateway.log()

    # A refresh token the issuer no longer accepts: a clear error, not a traceback.
    data = json.loads(cache.read_text())
    data["issuers"][oidc_provider.issuer].update(expires_at=0, refresh_token="revoked")
    cache.write_text(json.dumps(data))
    r = _pgward(["token"], env)
    assert r.returncode == 1 and "could not be refreshed" in r.stderr and "pgward login" in r.stderr
