"""OidcVerifier edge cases with self-signed tokens and a JWKS on a real loopback socket; the throttle."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from pydantic import ValidationError

from control_plane.config import OidcIssuer, ServiceSubject, Settings
from control_plane.demo.certs import ensure_certs
from control_plane.identity.credentials import AuthError
from control_plane.identity.dev_issuer import DevIdentity, DevIssuer
from control_plane.identity.oidc import OidcVerifier, looks_like_jwt
from control_plane.identity.throttle import LoginThrottle

AUD = "pgward-unit"


class JwksServer:
    """Discovery + JWKS on a loopback port; `keys` may be swapped and `fetches` counts JWKS requests."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": server.issuer, "jwks_uri": f"{server.issuer}/keys"}
                elif self.path == "/keys":
                    server.fetches += 1
                    body = {"keys": [k.as_dict(private=False) for k in server.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.close()


def _rsa(kid: str = "r1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


def _claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer, "sub": "u-1", "aud": AUD, "iat": now, "exp": now + 300,
                              "preferred_username": "alice", "groups": ["analysts"]}  # fmt: skip
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key: Any, claims: dict[str, Any], alg: str = "RS256", **header: Any) -> str:
    if alg == "EdDSA":
        with pytest.warns(SecurityWarning):
            return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])


def _verifier(server: JwksServer, **kwargs: Any) -> OidcVerifier:
    names = ("service_subjects", "username_claim", "groups_claim")
    issuer_kwargs = {k: kwargs.pop(k) for k in names if k in kwargs}
    config = OidcIssuer(issuer=server.issuer, audience=AUD, **issuer_kwargs)
    return OidcVerifier([config], **kwargs)


def _verify(verifier: OidcVerifier, token: str, user: str | None = None) -> Any:
    async def run() -> Any:
        try:
            return await verifier.verify(user, token)
        finally:
            await verifier.aclose()

    return asyncio.run(run())


def _refused(verifier: OidcVerifier, token: str, user: str | None = None) -> str:
    with pytest.raises(AuthError) as info:
        _verify(verifier, token, user)
    assert info.value.sqlstate == "28P01"
    assert token not in info.value.message
    return info.value.message


@pytest.mark.parametrize(
    ("alg", "key"),
    [("RS256", _rsa()), ("ES256", ECKey.generate_key("P-256", parameters={"kid": "e1"})),
     ("EdDSA", OKPKey.generate_key("Ed25519", parameters={"kid": "o1"})),
     ("Ed25519", OKPKey.generate_key("Ed25519", parameters={"kid": "o2"}))],
)  # fmt: skip
def test_accepted_algorithms(jwks: JwksServer, alg: str, key: Any) -> None:
    jwks.keys = [key]
    identity = _verify(_verifier(jwks), _token(key, _claims(jwks.issuer), alg), "alice")
    assert (identity.username, identity.groups, identity.kind, identity.credential) == (
        "alice", ("analysts",), "person", "oidc",
    )  # fmt: skip


def test_other_algorithms_are_refused(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    assert "algorithm" in _refused(_verifier(jwks), _token(key, _claims(jwks.issuer), "PS256"))
    assert "algorithm" in _refused(_verifier(jwks), _token(key, _claims(jwks.issuer), "RS512"))
    assert jwks.fetches == 0  # refused before any key was needed


def test_clock_skew(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    now = int(time.time())
    slightly_expired = _token(key, _claims(jwks.issuer, exp=now - 30))
    assert _verify(_verifier(jwks, clock_skew=60), slightly_expired).username == "alice"
    assert "expiry" in _refused(_verifier(jwks, clock_skew=10), slightly_expired)
    future_iat = _token(key, _claims(jwks.issuer, iat=now + 120))
    assert "issued-at" in _refused(_verifier(jwks, clock_skew=60), future_iat)
    assert _verify(_verifier(jwks, clock_skew=600), future_iat).username == "alice"


def test_audience_list_and_claim_names(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    token = _token(key, _claims(jwks.issuer, aud=["other", AUD], preferred_username=None, roles=["x", "y"]))
    identity = _verify(_verifier(jwks, groups_claim="roles"), token)
    assert identity.username == "u-1"  # falls back to sub
    assert identity.groups == ("x", "y")
    email = _token(key, _claims(jwks.issuer, email="a@example.com"))
    assert _verify(_verifier(jwks, username_claim="email"), email).username == "a@example.com"


def test_service_subjects_glob_regex_and_stored_groups(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    rules = (
        ServiceSubject(subject="repo:acme/*:ref:refs/heads/main", identity="deployer"),
        ServiceSubject(subject_regex=r"system:serviceaccount:[a-z-]+:etl", identity="etl", groups=("etl",)),
    )
    looked_up: list[str] = []

    async def stored(name: str) -> tuple[str, ...] | None:
        looked_up.append(name)
        return ("deployers", "ci") if name == "deployer" else None

    v = _verifier(jwks, service_subjects=rules, service_groups=stored)
    gha = _token(key, _claims(jwks.issuer, sub="repo:acme/app:ref:refs/heads/main", groups=["ignored"]))
    identity = _verify(v, gha, "deployer")
    assert (identity.username, identity.kind, identity.groups) == ("deployer", "service", ("deployers", "ci"))
    v = _verifier(jwks, service_subjects=rules, service_groups=stored)
    k8s = _token(key, _claims(jwks.issuer, sub="system:serviceaccount:data:etl"))
    assert _verify(v, k8s, "etl").groups == ("etl",)
    v = _verifier(jwks, service_subjects=rules, service_groups=stored)
    other_branch = _token(key, _claims(jwks.issuer, sub="repo:acme/app:ref:refs/heads/dev"))
    assert _verify(v, other_branch).kind == "person"  # no rule matched: an ordinary subject
    assert looked_up == ["deployer", "etl"]


def test_act_claim_records_the_person_behind_the_agent(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    rules = (ServiceSubject(subject="agent-*", identity="agent", groups=("agents",)),)
    claims = _claims(jwks.issuer, sub="alice-sub", groups=["dba", "admins"], act={"sub": "agent-42"})
    token = _token(key, claims)
    identity = _verify(_verifier(jwks, service_subjects=rules), token, "agent")
    assert (identity.subject, identity.username, identity.kind, identity.groups) == (
        "agent-42", "agent", "service", ("agents",),
    )  # fmt: skip
    assert identity.acting_for is not None
    assert (identity.acting_for.username, identity.acting_for.groups) == ("alice", ("dba", "admins"))
    # The startup user names the agent, not the person.
    assert "user" in _refused(_verifier(jwks, service_subjects=rules), token, "alice")
    # An unmapped actor never inherits the person's groups.
    unmapped = _token(key, _claims(jwks.issuer, groups=["admins"], act={"sub": "tool-9"}))
    identity = _verify(_verifier(jwks), unmapped)
    assert identity.username == "tool-9" and identity.groups == ()


def test_unknown_kid_refresh_is_rate_limited(jwks: JwksServer) -> None:
    old, new = _rsa("old"), _rsa("new")
    jwks.keys = [old]
    verifier = _verifier(jwks, refresh_interval=3600)

    async def run() -> None:
        assert (await verifier.verify(None, _token(old, _claims(jwks.issuer)))).username == "alice"
        jwks.keys = [new]
        for _ in range(5):
            with pytest.raises(AuthError, match="signature"):
                await verifier.verify(None, _token(new, _claims(jwks.issuer)))
        await verifier.aclose()

    asyncio.run(run())
    assert jwks.fetches == 1  # the first fetch happened less than refresh_interval ago: no refetch

    jwks.fetches = 0
    verifier = _verifier(jwks, refresh_interval=0)
    jwks.keys = [old]

    async def rotate() -> None:
        assert (await verifier.verify(None, _token(old, _claims(jwks.issuer)))).username == "alice"
        jwks.keys = [new]
        tokens = [_token(new, _claims(jwks.issuer)) for _ in range(10)]
        results = await asyncio.gather(*(verifier.verify(None, t) for t in tokens))
        assert all(r.username == "alice" for r in results)
        await verifier.aclose()

    asyncio.run(rotate())
    assert jwks.fetches == 2  # initial + exactly one refresh for ten concurrent logins with the new kid


def test_unconfigured_and_unreachable_issuers(jwks: JwksServer) -> None:
    key = _rsa()
    jwks.keys = [key]
    assert "issuer" in _refused(_verifier(jwks), _token(key, _claims("https://other.example")))
    jwks.close()
    message = _refused(_verifier(jwks), _token(key, _claims(jwks.issuer)))
    assert "unavailable" in message


def test_credential_shape() -> None:
    assert looks_like_jwt("eyJh.eyJz.c2ln") and looks_like_jwt("eyJh.eyJz.")
    assert not looks_like_jwt("pgw_0123456789ab_secret")
    assert not looks_like_jwt("a.b") and not looks_like_jwt("a.b.c.d") and not looks_like_jwt("a b.c.d")


def test_issuer_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="https"):
        OidcIssuer(issuer="http://idp.example.com", audience="x")
    with pytest.raises(ValidationError, match="exactly one"):
        ServiceSubject(subject="a*", subject_regex="a.*", identity="x")
    with pytest.raises(ValidationError, match="compile"):
        ServiceSubject(subject_regex="(", identity="x")
    monkeypatch.setenv(
        "PGWARD_OIDC_ISSUERS",
        '[{"issuer": "https://idp.example.com", "audience": "pgward", "ca_file": "/etc/ca.pem",'
        ' "service_subjects": [{"subject": "ci-*", "identity": "ci"}]}]',
    )
    monkeypatch.setenv("PGWARD_APPROVER_GROUPS", "leads,approvers")
    settings = Settings()
    (issuer,) = settings.oidc_issuers
    assert issuer.groups_claim == "groups" and issuer.username_claim == "preferred_username"
    assert issuer.ca_file == Path("/etc/ca.pem") and issuer.service_subjects[0].identity == "ci"
    assert settings.approver_groups == ["leads", "approvers"] and settings.auditor_groups == ["auditors"]


def test_throttle_grows_caps_and_decays() -> None:
    now = [0.0]
    t = LoginThrottle(grace=2, base=0.25, max_delay=2.0, halflife=60, clock=lambda: now[0])
    delays = []
    for _ in range(8):
        delays.append(t.delay_for("10.0.0.1:5000"))
        t.failed("10.0.0.1:5000")
    assert delays == [0, 0, 0, 0.25, 0.5, 1.0, 2.0, 2.0]
    # Keyed by host, not by the ephemeral port; another address is untouched.
    assert t.delay_for("10.0.0.1:6000") == 2.0 and t.delay_for("10.0.0.2:5000") == 0
    assert t.delay_for("[::1]:1") == 0
    now[0] += 60  # one half-life: 8 failures count as 4
    assert t.delay_for("10.0.0.1:1") == 0.5
    now[0] += 600
    assert t.delay_for("10.0.0.1:1") == 0


def test_dev_issuer_over_https(tmp_path: Path) -> None:
    tls = ensure_certs(tmp_path / "tls")
    identities = {"carol": DevIdentity("carol", "carol", ("approvers",))}

    async def run() -> None:
        issuer = DevIssuer(
            tmp_path / "dev", identities, audience=AUD, tls_cert=tls.server_cert, tls_key=tls.server_key
        )
        await issuer.start()
        try:
            config = OidcIssuer(issuer=issuer.issuer, audience=AUD, ca_file=tls.ca_cert)
            verifier = OidcVerifier([config])
            identity = await verifier.verify("carol", issuer.mint("carol"))
            assert identity.groups == ("approvers",) and verifier.jwks_fetches() == {issuer.issuer: 1}
            # Without the demo CA the issuer's certificate is not trusted, so no keys, so no login.
            untrusting = OidcVerifier([OidcIssuer(issuer=issuer.issuer, audience=AUD)])
            with pytest.raises(AuthError, match="unavailable"):
                await untrusting.verify("carol", issuer.mint("carol"))
            await verifier.aclose()
            await untrusting.aclose()
        finally:
            await issuer.stop()
        assert (tmp_path / "dev" / "signing-key.json").stat().st_mode & 0o077 == 0

    asyncio.run(run())
