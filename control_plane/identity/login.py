"""`pgward login` / `pgward token`: OAuth device or PKCE flows and the user's 0600 token cache."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from control_plane.identity.oidc import looks_like_jwt

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPE = "openid offline_access profile groups"
# Refresh this long before expiry, so a token handed to psql is still valid when the gateway checks it.
REFRESH_LEEWAY = 60.0


class LoginError(Exception):
    """A login or refresh that cannot complete; the message is for the user (never holds a token)."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        return Path(base) / "pgward"
    import platformdirs

    return Path(platformdirs.user_config_dir("pgward"))


def tokens_path() -> Path:
    return config_dir() / "tokens.json"


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def _client(ca_file: str | None) -> httpx.Client:
    return httpx.Client(verify=_verify(ca_file), timeout=30, follow_redirects=False)


def discover(issuer: str, ca_file: str | None = None) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with _client(ca_file) as client:
            response = client.get(url)
            response.raise_for_status()
            data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginError(f"cannot read the OIDC discovery document of {issuer}: {exc}") from None
    if not isinstance(data, dict) or data.get("issuer") != issuer or "token_endpoint" not in data:
        raise LoginError(f"{url} is not a discovery document for issuer {issuer}")
    return data


def _token_request(endpoint: str, form: dict[str, str], ca_file: str | None) -> tuple[int, dict[str, Any]]:
    try:
        with _client(ca_file) as client:
            response = client.post(endpoint, data=form, headers={"Accept": "application/json"})
            body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginError(f"the token endpoint {endpoint} did not answer: {exc}") from None
    return response.status_code, body if isinstance(body, dict) else {}


def _error_text(body: dict[str, Any]) -> str:
    error = str(body.get("error", "error"))
    description = body.get("error_description")
    return f"{error}: {description}" if description else error


@dataclass(frozen=True)
class DevicePrompt:
    verification_uri: str
    user_code: str
    verification_uri_complete: str | None


def device_flow(
    discovery: dict[str, Any],
    client_id: str,
    scope: str,
    *,
    ca_file: str | None,
    prompt: Callable[[DevicePrompt], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """RFC 8628: show the user a code, poll the token endpoint until they have approved it."""
    status, body = _token_request(
        discovery["device_authorization_endpoint"], {"client_id": client_id, "scope": scope}, ca_file
    )
    if status != 200 or "device_code" not in body:
        raise LoginError(f"the issuer refused the device authorization request ({_error_text(body)})")
    prompt(DevicePrompt(body["verification_uri"], body["user_code"], body.get("verification_uri_complete")))
    interval = float(body.get("interval", 5))
    deadline = time.monotonic() + float(body.get("expires_in", 600))
    form = {"grant_type": DEVICE_GRANT, "device_code": body["device_code"], "client_id": client_id}
    while time.monotonic() < deadline:
        sleep(interval)
        status, answer = _token_request(discovery["token_endpoint"], form, ca_file)
        if status == 200 and "access_token" in answer:
            return answer
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5  # RFC 8628 §3.5
            continue
        raise LoginError(f"the login did not complete ({_error_text(answer)})")
    raise LoginError("the login code expired before it was approved; run `pgward login` again")


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    result: dict[str, str]

    def do_GET(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if "code" not in query and "error" not in query:
            self.send_error(404)
            return
        type(self).result.update(query)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"pgward: login complete, you can close this window.\n")

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: never log it
        return


def pkce_flow(
    discovery: dict[str, Any],
    client_id: str,
    scope: str,
    *,
    ca_file: str | None,
    open_url: Callable[[str], None],
    timeout: float = 300,
) -> dict[str, Any]:
    """Authorization code with PKCE (RFC 7636) on a loopback redirect (RFC 8252 §7.3)."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(24)
    result: dict[str, str] = {}
    handler = type("Handler", (_CallbackHandler,), {"result": result})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 1
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    url = discovery["authorization_endpoint"] + "?" + urllib.parse.urlencode(params)
    thread = threading.Thread(target=_serve_until_result, args=(server, result, timeout), daemon=True)
    thread.start()
    open_url(url)
    thread.join(timeout + 2)
    server.server_close()
    if not result:
        raise LoginError("no answer from the browser in time; run `pgward login` again")
    if result.get("state") != state:
        raise LoginError("the login answer does not belong to this login (state mismatch)")
    if "error" in result:
        raise LoginError(f"the issuer refused the login ({_error_text(dict(result))})")
    form = {
        "grant_type": "authorization_code",
        "code": result["code"],
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    status, answer = _token_request(discovery["token_endpoint"], form, ca_file)
    if status != 200 or "access_token" not in answer:
        raise LoginError(f"the issuer refused the authorization code ({_error_text(answer)})")
    return answer


def _serve_until_result(server: http.server.HTTPServer, result: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not result and time.monotonic() < deadline:
        server.handle_request()


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT without checking it: only for display and expiry, never for trust."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _entry_from_response(answer: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    access = answer.get("access_token")
    id_token = answer.get("id_token") or (previous or {}).get("id_token")
    # The gateway needs a JWT: the access token when the issuer makes JWT access tokens, else the ID token.
    token = access if isinstance(access, str) and looks_like_jwt(access) else id_token
    if not isinstance(token, str) or not looks_like_jwt(token):
        raise LoginError("the issuer returned no JWT (neither a JWT access token nor an ID token)")
    exp = unverified_claims(token).get("exp")
    if not isinstance(exp, int | float):
        exp = time.time() + float(answer.get("expires_in", 300))
    return {
        "token": token,
        "refresh_token": answer.get("refresh_token") or (previous or {}).get("refresh_token"),
        "expires_at": float(exp),
        "id_token": id_token,
    }


class TokenCache:
    """`tokens.json` in the user's config dir: {"default": issuer, "issuers": {issuer: entry}}, mode 0600."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or tokens_path()

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"issuers": {}}
        except (OSError, ValueError) as exc:
            raise LoginError(f"cannot read {self.path}: {exc}; run `pgward login` again") from None
        return data if isinstance(data, dict) and isinstance(data.get("issuers"), dict) else {"issuers": {}}

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        # 0600 from the first byte: the file holds refresh tokens.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, self.path)

    def store(
        self, issuer: str, client_id: str, ca_file: str | None, answer: dict[str, Any]
    ) -> dict[str, Any]:
        data = self.load()
        entry = {"client_id": client_id, "ca_file": ca_file, **_entry_from_response(answer)}
        data["issuers"][issuer] = entry
        data["default"] = issuer
        self.save(data)
        return entry

    def token(self, issuer: str | None = None, *, now: Callable[[], float] = time.time) -> str:
        """A valid token for `issuer` (default: the last one logged in to), refreshed when needed."""
        data = self.load()
        issuer = issuer or data.get("default")
        entry = data["issuers"].get(issuer) if issuer else None
        if not entry:
            which = f" to {issuer}" if issuer else ""
            raise LoginError(f"not logged in{which}: run `pgward login` first")
        if float(entry.get("expires_at", 0)) - REFRESH_LEEWAY > now():
            return str(entry["token"])
        refresh = entry.get("refresh_token")
        if not refresh:
            raise LoginError("the cached token has expired and there is no refresh token: run `pgward login`")
        assert issuer is not None
        discovery = discover(issuer, entry.get("ca_file"))
        form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": entry["client_id"]}
        status, answer = _token_request(discovery["token_endpoint"], form, entry.get("ca_file"))
        if status != 200 or "access_token" not in answer:
            raise LoginError(f"the token could not be refreshed ({_error_text(answer)}): run `pgward login`")
        entry.update(_entry_from_response(answer, previous=entry))
        data["issuers"][issuer] = entry
        self.save(data)
        return str(entry["token"])
