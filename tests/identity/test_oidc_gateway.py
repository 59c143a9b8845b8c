"""OIDC logins through a real `pgward serve`, with tokens from a real OIDC provider process."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from joserfc.jwk import RSAKey

from control_plane.pgserver import LocalPostgres
from tests.fixtures.gateway import Gateway, stop_gateway
from tests.fixtures.oidc import OidcProvider, start_oidc_gateway
from tests.fixtures.postgres import TargetDatabase
from tests.gateway.wire import Wire


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _refusal(gw: Gateway, token: str, user: str = "alice") -> str:
    """Connect with `token`; return the server's error text (the connection must fail with 28P01)."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.conninfo(user=user), password=token, connect_timeout=20).close()
    text = str(info.value)
    assert token not in text
    r = gw.psql("select 1", password=token, conninfo=gw.conninfo(user=user))
    assert r.returncode != 0 and "28P01" not in r.stdout
    assert token not in r.stderr
    return text


def _whoami(gw: Gateway, token: str, user: str) -> str:
    with psycopg.connect(gw.conninfo(user=user), password=token, connect_timeout=20) as conn:
        row = conn.execute("select current_database()").fetchone()
    assert row is not None
    return str(row[0])


def test_device_flow_token_connects_and_user_must_match(
    oidc_gateway: Gateway, oidc_provider: OidcProvider
) -> None:
    answer = oidc_provider.device_token("alice")
    token = answer["access_token"]
    assert _whoami(oidc_gateway, token, "alice") == "shop"
    text = _refusal(oidc_gateway, token, user="bob")
    assert "user" in text and '"alice"' in text and '"bob"' in text
    assert token not in oidc_gateway.log()


def test_client_credentials_map_to_service_identity(
    oidc_gateway: Gateway, oidc_provider: OidcProvider
) -> None:
    token = oidc_provider.client_credentials("ci-runner-1", "ci-runner-secret")
    # `sub` is the client id; the glob `ci-runner-*` maps it to the stored service identity `ci`.
    assert _whoami(oidc_gateway, token, "ci") == "shop"
    assert '"ci"' in _refusal(oidc_gateway, token, user="ci-runner-1")
    with httpx.Client(base_url=oidc_gateway.api_url, headers={"Authorization": f"Bearer {token}"}) as api:
        me = api.get("/v1/me").json()
    assert (me["username"], me["kind"], me["groups"], me["credential"]) == ("ci", "service", ["ci"], "oidc")
    agent = oidc_provider.client_credentials("agent-7", "agent-secret")
    assert _whoami(oidc_gateway, agent, "agent") == "shop"
    with httpx.Client(base_url=oidc_gateway.api_url, headers={"Authorization": f"Bearer {agent}"}) as api:
        me = api.get("/v1/me").json()
    assert (me["username"], me["groups"]) == ("agent", ["agents"])


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("expired", "expiry"),
        ("not_yet_valid", "not-before"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("forged", "signature"),
        ("alg_none", "algorithm"),
        ("hs256_public_key", "algorithm"),
        ("no_exp", "expiry"),
    ],
)
def test_bad_tokens_are_28P01_naming_the_check(
    oidc_gateway: Gateway, oidc_provider: OidcProvider, case: str, check: str
) -> None:
    now = int(time.time())
    p = oidc_provider
    if case == "expired":
        token = p.sign(p.claims(exp=now - 3600, iat=now - 7200))
    elif case == "not_yet_valid":
        token = p.sign(p.claims(nbf=now + 3600))
    elif case == "wrong_audience":
        token = p.sign(p.claims(aud="someone-else"))
    elif case == "wrong_issuer":
        token = p.sign(p.claims(iss="https://evil.example"))
    elif case == "forged":
        # Same kid as the provider's real key, but a key the attacker made.
        forger = RSAKey.generate_key(2048, parameters={"kid": p.key.kid})
        token = p.sign(p.claims(), key=forger)
    elif case == "alg_none":
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(p.claims())}."
    elif case == "hs256_public_key":
        # The classic confusion attack: HMAC keyed with the issuer's public key.
        import hashlib
        import hmac

        from cryptography.hazmat.primitives import serialization

        public_pem = p.key.private_key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{_b64({'alg': 'HS256', 'kid': p.key.kid, 'typ': 'JWT'})}.{_b64(p.claims())}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    else:
        token = p.sign(p.claims(exp=None))
    text = _refusal(oidc_gateway, token)
    assert "28P01" in text or "OIDC token refused" in text
    assert f"OIDC token refused: {check}" in text, text
    assert token not in oidc_gateway.log()
    # And the same token with the right claims but signed properly does work: the check is what failed.
    assert _whoami(oidc_gateway, p.sign(p.claims()), "alice") == "shop"


@pytest.mark.parametrize("claims", [{"aud": "nope"}, {"exp": 1000}, {"iss": "https://elsewhere.example"}])
def test_refusals_are_28P01_on_the_wire(
    oidc_gateway: Gateway, oidc_provider: OidcProvider, claims: dict[str, object]
) -> None:
    token = oidc_provider.sign(oidc_provider.claims(**claims))
    w = Wire.connect_tls(oidc_gateway.host, oidc_gateway.port, oidc_gateway.sslrootcert)
    try:
        error = w.login("alice", token)[-1]
    finally:
        w.close()
    assert error.tag == b"E"
    fields = error.fields()
    assert fields["C"] == "28P01" and fields["S"] == "FATAL"
    assert fields["M"].startswith("OIDC token refused:") and token not in str(fields)


def test_bearer_jwt_on_rest_api(oidc_gateway: Gateway, oidc_provider: OidcProvider) -> None:
    bob = oidc_provider.device_token("bob")["access_token"]
    alice = oidc_provider.device_token("alice")["access_token"]
    with httpx.Client(base_url=oidc_gateway.api_url, timeout=30) as api:
        assert api.get("/v1/connections", headers={"Authorization": f"Bearer {bob}"}).status_code == 200
        denied = api.get("/v1/connections", headers={"Authorization": f"Bearer {alice}"})
        assert denied.status_code == 403 and "admins" in denied.text
        assert api.get("/v1/connections").status_code == 401
        bad = oidc_provider.sign(oidc_provider.claims(aud="nope", groups=["admins"]))
        refused = api.get("/v1/connections", headers={"Authorization": f"Bearer {bad}"})
        assert refused.status_code == 401 and "audience" in refused.text and bad not in refused.text
        me = api.get("/v1/me", headers={"Authorization": f"Bearer {bob}"}).json()
        assert me["roles"] == ["admin"] and me["groups"] == ["dba", "admins"]
    assert bob not in oidc_gateway.log() and alice not in oidc_gateway.log()


def test_group_changes_take_effect_on_next_login(
    oidc_gateway: Gateway, oidc_provider: OidcProvider, store_pg: LocalPostgres
) -> None:
    def me(token: str) -> dict[str, object]:
        with httpx.Client(base_url=oidc_gateway.api_url, headers={"Authorization": f"Bearer {token}"}) as api:
            data: dict[str, object] = api.get("/v1/me").json()
            return data

    # A person: the provider's groups, read at the next login.
    first = oidc_provider.device_token("dave")["access_token"]
    assert me(first)["groups"] == ["contractors"]
    oidc_provider.set_groups("dave", ["analysts", "admins"])
    try:
        second = oidc_provider.device_token("dave")["access_token"]
        assert me(second)["groups"] == ["analysts", "admins"]
        assert _whoami(oidc_gateway, second, "dave") == "shop"
    finally:
        oidc_provider.set_groups("dave", ["contractors"])
    # A mapped service: the stored identity's groups, read on every connection with the same token.
    token = oidc_provider.client_credentials()
    assert me(token)["groups"] == ["ci"]
    url = oidc_gateway.env["PGWARD_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE service_identities SET groups = '{ci,deployers}' WHERE name = 'ci'")
        try:
            assert me(token)["groups"] == ["ci", "deployers"]
            assert _whoami(oidc_gateway, token, "ci") == "shop"
            conn.execute("UPDATE service_identities SET disabled = true WHERE name = 'ci'")
            with pytest.raises(psycopg.OperationalError) as info:
                psycopg.connect(oidc_gateway.conninfo(user="ci"), password=token, connect_timeout=20)
            assert 'service identity "ci" is disabled' in str(info.value)
        finally:
            conn.execute("UPDATE service_identities SET groups = '{ci}', disabled = false WHERE name = 'ci'")


def test_key_rotation_keeps_pool_and_refreshes_jwks_once(
    oidc_gateway: Gateway, oidc_provider: OidcProvider
) -> None:
    old_token = oidc_provider.client_credentials()
    pool = [psycopg.connect(oidc_gateway.conninfo(user="ci"), password=old_token) for _ in range(4)]
    try:
        # A fresh gateway may not have fetched the keys yet: prime it, then count from here.
        assert _whoami(oidc_gateway, old_token, "ci") == "shop"
        old_key = oidc_provider.rotate()
        before = oidc_provider.jwks_requests()
        time.sleep(2.2)  # past the gateway's refresh rate limit (2 s in this fixture)
        for conn in pool:
            assert conn.execute("select count(*) from shop.customers").fetchone() == (1000,)
        new_tokens = [oidc_provider.client_credentials() for _ in range(5)]
        assert all(t.split(".")[0] != old_token.split(".")[0] for t in new_tokens)  # a new kid in the header
        for token in new_tokens:
            assert _whoami(oidc_gateway, token, "ci") == "shop"
        assert oidc_provider.jwks_requests() - before == 1
        for conn in pool:
            assert conn.execute("select 1").fetchone() == (1,)
        # The old key is gone from the refreshed set: a new connection with an old-key token fails.
        forged_old = oidc_provider.sign(oidc_provider.claims(), key=old_key)
        assert "OIDC token refused: signature" in _refusal(oidc_gateway, forged_old)
    finally:
        for conn in pool:
            conn.close()


def test_unknown_kids_do_not_hammer_the_issuer(oidc_gateway: Gateway, oidc_provider: OidcProvider) -> None:
    # Make sure the keys are loaded, then wait out the rate limit so one refresh is allowed.
    assert _whoami(oidc_gateway, oidc_provider.client_credentials(), "ci") == "shop"
    time.sleep(2.2)
    before = oidc_provider.jwks_requests()
    for n in range(6):
        stranger = RSAKey.generate_key(2048, parameters={"kid": f"unknown-{n}"})
        assert "signature" in _refusal(oidc_gateway, oidc_provider.sign(oidc_provider.claims(), key=stranger))
    assert oidc_provider.jwks_requests() - before == 1


def test_repeated_failures_are_slowed_down(
    pg_tmp_path: Path, store_pg: LocalPostgres, target_pg: TargetDatabase, oidc_provider: OidcProvider
) -> None:
    gw = start_oidc_gateway(
        pg_tmp_path / "throttled",
        store_pg,
        target_pg,
        oidc_provider,
        PGWARD_LOGIN_THROTTLE_GRACE="1",
        PGWARD_LOGIN_THROTTLE_BASE="0.2",
        PGWARD_LOGIN_THROTTLE_MAX="0.8",
        PGWARD_LOGIN_THROTTLE_HALFLIFE="600",
    )
    try:
        bad = oidc_provider.sign(oidc_provider.claims(aud="nope"))
        durations = []
        for _ in range(6):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gw.conninfo(user="alice"), password=bad, connect_timeout=20)
            durations.append(time.monotonic() - started)
        # Delays before answering: 0, 0, 0.2, 0.4, 0.8, 0.8 (capped).
        assert durations[-1] >= 0.75 and durations[-1] - durations[0] >= 0.5, durations
        assert durations[3] >= 0.35 and durations[4] >= 0.75, durations
        assert max(durations) < 3, durations
    finally:
        stop_gateway(gw)
