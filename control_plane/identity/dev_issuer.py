"""DEVELOPMENT ONLY: a tiny OIDC issuer for `pgward demo` that mints tokens for the demo identities."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["DevIdentity", "DevIssuer"]

TOKEN_LIFETIME = 12 * 3600  # long enough for a demo session; re-minted at every demo start
_KEY_FILE = "signing-key.json"
_CLIENTS_FILE = "client-secrets.json"


@dataclass(frozen=True)
class DevIdentity:
    """Who the development issuer mints tokens for: `subject` becomes `sub`, `username` the username claim."""

    subject: str
    username: str
    groups: tuple[str, ...]


class _QuietServer(uvicorn.Server):
    # The demo owns the process's signals; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _load_or_create_key(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    key = ECKey.generate_key("P-256", parameters={"kid": f"dev-{secrets.token_hex(4)}", "alg": "ES256"})
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    return key


def _load_or_create_secrets(path: Path, names: list[str]) -> dict[str, str]:
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if all(name in saved for name in names):
        return saved
    for name in names:
        saved.setdefault(name, secrets.token_urlsafe(24))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(saved, handle)
    os.replace(tmp, path)
    return saved


class DevIssuer:
    """Discovery, JWKS and a client-credentials token endpoint on loopback HTTPS.

    It knows only the identities it was given (each a client whose secret is kept in
    `directory/client-secrets.json`) and signs with a persisted ES256 key in `directory`.
    Never use it outside development: anyone who can read the state directory can mint tokens.
    """

    def __init__(
        self,
        directory: Path,
        identities: Mapping[str, DevIdentity],
        *,
        audience: str,
        tls_cert: Path,
        tls_key: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.directory = directory
        self.identities = dict(identities)
        self.audience = audience
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.key = _load_or_create_key(directory / _KEY_FILE)
        self.client_secrets = _load_or_create_secrets(directory / _CLIENTS_FILE, sorted(self.identities))
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]
        self.issuer = f"https://{host}:{self.port}"
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    def mint(
        self, name: str, *, lifetime: int = TOKEN_LIFETIME, extra: Mapping[str, Any] | None = None
    ) -> str:
        identity = self.identities[name]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": identity.subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "preferred_username": identity.username,
            "groups": list(identity.groups),
            "jti": secrets.token_urlsafe(12),
            **(extra or {}),
        }
        header = {"alg": "ES256", "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key)

    def app(self) -> Starlette:
        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.issuer}/jwks",
                    "token_endpoint": f"{self.issuer}/token",
                    "grant_types_supported": ["client_credentials"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                    "subject_types_supported": ["public"],
                    "response_types_supported": ["token"],
                }
            )

        async def jwks(request: Request) -> JSONResponse:
            return JSONResponse({"keys": [{**self.key.as_dict(private=False), "use": "sig"}]})

        async def token(request: Request) -> JSONResponse:
            form = await request.form()
            client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            expected = self.client_secrets.get(client_id)
            if expected is None or not hmac.compare_digest(expected, client_secret):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            return JSONResponse(
                {"access_token": self.mint(client_id), "token_type": "Bearer", "expires_in": TOKEN_LIFETIME},
                headers={"Cache-Control": "no-store"},
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/token", token, methods=["POST"]),
            ]
        )

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(self.tls_cert),
            ssl_keyfile=str(self.tls_key),
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="pgward-dev-issuer")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the development OIDC issuer stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)
        self._socket.close()
