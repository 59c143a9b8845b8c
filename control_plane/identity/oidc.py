"""OIDC bearer tokens (JWTs) from configured issuers: discovery, cached JWKS, validation, identity mapping."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

from control_plane.config import OidcIssuer, ServiceSubject, Settings
from control_plane.identity.credentials import AuthError, Identity

log = structlog.get_logger("pgward.oidc")

# Asymmetric algorithms only: `none` proves nothing, and HMAC would let anyone holding the
# issuer's *public* key forge tokens if it were ever used as an HMAC secret.
# "Ed25519" is RFC 9864's fully-specified name for what "EdDSA" means with an Ed25519 key.
ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA", "Ed25519"})
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_MAX_TOKEN_LENGTH = 16 * 1024
_MAX_DOCUMENT_BYTES = 1024 * 1024

# (name of a service identity) → its groups, or None when the store has no such identity.
# Raises AuthError when the identity exists but may not log in (disabled).
ServiceGroups = Callable[[str], Awaitable[tuple[str, ...] | None]]


def looks_like_jwt(credential: str) -> bool:
    """Three base64url segments separated by dots (the third may be empty: an unsigned token)."""
    return len(credential) <= _MAX_TOKEN_LENGTH and _JWT_SHAPE.match(credential) is not None


def _refused(check: str, detail: str) -> AuthError:
    # The message names the failed check; it never contains the token.
    return AuthError.bad_credentials(f"OIDC token refused: {check}: {detail}")


def _printable(value: object, limit: int = 120) -> str:
    """A claim value fit for an error message (claims are attacker-controlled text)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def subject_matches(rule: ServiceSubject, subject: str) -> bool:
    if rule.subject is not None:
        return fnmatch.fnmatchcase(subject, rule.subject)
    assert rule.subject_regex is not None
    return re.fullmatch(rule.subject_regex, subject) is not None


class IssuerKeys:
    """Discovery document and JWKS of one issuer, fetched lazily and refreshed only when a key is unknown."""

    def __init__(self, config: OidcIssuer, *, refresh_interval: float, timeout: float) -> None:
        self.config = config
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.keys: KeySet | None = None
        self.jwks_uri: str | None = None
        self.fetches = 0  # JWKS fetches so far, for metrics and tests
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.config.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(self.config.ca_file))
            # No redirects: the documents must come from the URLs the issuer names.
            self._client = httpx.AsyncClient(verify=verify, timeout=self.timeout, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._http().get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} answered more than {_MAX_DOCUMENT_BYTES} bytes")
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return data

    async def _fetch(self) -> None:
        issuer = self.config.issuer
        if self.jwks_uri is None:
            discovery = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer:
                raise ValueError(f"discovery names issuer {discovery.get('issuer')!r}, expected {issuer!r}")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise ValueError("discovery document has no jwks_uri")
            self.jwks_uri = jwks_uri
        document = await self._get_json(self.jwks_uri)
        keys = [k for k in document.get("keys", []) if isinstance(k, dict) and k.get("use", "sig") == "sig"]
        usable = []
        for key in keys:
            try:
                KeySet.import_key_set({"keys": [key]})
            except (JoseError, ValueError, TypeError):
                continue  # one key of a type we do not know must not hide the others
            usable.append(key)
        self.keys = KeySet.import_key_set({"keys": usable})
        self.fetches += 1
        log.info("fetched JWKS", issuer=issuer, keys=len(usable), fetches=self.fetches)

    async def key_set(self, kid: str | None) -> KeySet:
        """The issuer's keys, refreshed first when `kid` is not among them and the rate limit allows."""
        if self.keys is not None and (kid is None or _has_kid(self.keys, kid)):
            return self.keys
        async with self._lock:
            # Another session may have refreshed while this one waited for the lock.
            if self.keys is not None and (kid is None or _has_kid(self.keys, kid)):
                return self.keys
            now = time.monotonic()
            if now - self._last_attempt >= self.refresh_interval:
                self._last_attempt = now
                try:
                    await self._fetch()
                except (httpx.HTTPError, ValueError, JoseError) as exc:
                    log.warning("cannot fetch JWKS", issuer=self.config.issuer, error=str(exc))
            if self.keys is None:
                issuer = self.config.issuer
                raise _refused("signature", f"the signing keys of issuer {issuer} are unavailable")
            return self.keys


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


@dataclass
class OidcVerifier:
    """Validates JWTs from the configured issuers and maps their claims to an `Identity`."""

    issuers: Sequence[OidcIssuer]
    clock_skew: float = 60.0
    refresh_interval: float = 30.0
    timeout: float = 5.0
    service_groups: ServiceGroups | None = None
    clock: Callable[[], float] = time.time
    _keys: dict[str, IssuerKeys] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for config in self.issuers:
            self._keys[config.issuer] = IssuerKeys(
                config, refresh_interval=self.refresh_interval, timeout=self.timeout
            )

    @classmethod
    def from_settings(cls, settings: Settings, service_groups: ServiceGroups | None = None) -> OidcVerifier:
        return cls(
            issuers=settings.oidc_issuers,
            clock_skew=settings.oidc_clock_skew,
            refresh_interval=settings.oidc_jwks_refresh_interval,
            timeout=settings.oidc_http_timeout,
            service_groups=service_groups,
        )

    def jwks_fetches(self) -> dict[str, int]:
        return {issuer: keys.fetches for issuer, keys in self._keys.items()}

    async def aclose(self) -> None:
        for keys in self._keys.values():
            await keys.aclose()

    async def verify(self, user: str | None, secret: str) -> Identity:
        header, claims = _unverified_parts(secret)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise _refused(
                "algorithm",
                f"alg {_printable(alg)} is not accepted (allowed: {', '.join(sorted(ALLOWED_ALGORITHMS))})",
            )
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self._keys:
            raise _refused("issuer", f"issuer {_printable(issuer)} is not a configured OIDC issuer")
        keys = self._keys[issuer]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("signature", "the token header's kid is not a string")
        key_set = await keys.key_set(kid)
        if kid is not None and not _has_kid(key_set, kid):
            raise _refused("signature", f"key {_printable(kid)} is not in the JWKS of issuer {issuer}")
        try:
            with warnings.catch_warnings():
                # joserfc flags "EdDSA" as deprecated by RFC 9864; pgward accepts it on purpose,
                # since issuers still publish it, and a warning per login would flood the log.
                warnings.simplefilter("ignore", SecurityWarning)
                token = jwt.decode(secret, key_set, algorithms=[alg])
        except JoseError as exc:
            raise _refused(
                "signature", f"it does not verify against the keys of issuer {issuer} ({exc.error})"
            ) from None
        verified = token.claims
        # Re-check on the verified claims: the unverified parse above only chose the issuer.
        if verified.get("iss") != issuer:
            raise _refused("issuer", "issuer changed between parse and verification")
        self._check_times(verified)
        config = keys.config
        self._check_audience(config, verified)
        identity = await self._identity(config, verified)
        if user is not None and user != identity.username:
            raise AuthError.bad_credentials(
                f'OIDC token refused: user: the token is for "{identity.username}", '
                f'but the connection names user "{_printable(user)}"',
                hint=f"connect with user={identity.username}",
            )
        return identity

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        skew = self.clock_skew
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _refused("expiry", "the token has no numeric exp claim")
        if now > exp + skew:
            raise _refused("expiry", f"the token expired {int(now - exp)} s ago (allowed skew {int(skew)} s)")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now + skew < nbf):
            raise _refused("not-before", "the token is not valid yet (nbf is in the future)")
        iat = claims.get("iat")
        if iat is not None and (not _is_number(iat) or now + skew < iat):
            raise _refused("issued-at", "the token claims to be issued in the future (iat)")

    @staticmethod
    def _check_audience(config: OidcIssuer, claims: Mapping[str, Any]) -> None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if config.audience not in audiences:
            raise _refused(
                "audience",
                f"the token's audience {_printable(aud)} does not include {config.audience!r}",
            )

    async def _identity(self, config: OidcIssuer, claims: Mapping[str, Any]) -> Identity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _refused("subject", "the token has no sub claim")
        token_groups = _groups(claims.get(config.groups_claim))
        actor = claims.get("act")
        if isinstance(actor, dict):
            # RFC 8693: `sub` is the person the token was issued for, `act` the party using it.
            person = Identity(
                subject=subject,
                username=_username(config, claims, subject),
                groups=token_groups,
                issuer=config.issuer,
                kind="person",
                credential="oidc",
            )
            actor_sub = actor.get("sub")
            if not isinstance(actor_sub, str) or not actor_sub:
                raise _refused("actor", "the act claim has no sub")
            mapped = await self._service(config, actor_sub, default_groups=())
            if mapped is None:
                # The person's groups must never pass to the agent acting for them.
                mapped = (_username(config, actor, actor_sub), (), "person")
            name, groups, kind = mapped
            return Identity(actor_sub, name, groups, config.issuer, kind, "oidc", acting_for=person)
        mapped = await self._service(config, subject, default_groups=token_groups)
        if mapped is not None:
            name, groups, kind = mapped
            return Identity(subject, name, groups, config.issuer, kind, "oidc")
        username = _username(config, claims, subject)
        return Identity(subject, username, token_groups, config.issuer, "person", "oidc")

    async def _service(
        self, config: OidcIssuer, subject: str, *, default_groups: tuple[str, ...]
    ) -> tuple[str, tuple[str, ...], str] | None:
        for rule in config.service_subjects:
            if not subject_matches(rule, subject):
                continue
            stored = await self.service_groups(rule.identity) if self.service_groups is not None else None
            if rule.groups is not None:
                groups = rule.groups
            elif stored is not None:
                groups = stored
            else:
                groups = default_groups
            return rule.identity, tuple(groups), "service"
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(dict.fromkeys(g for g in value if isinstance(g, str)))
    return ()


def _username(config: OidcIssuer, claims: Mapping[str, Any], subject: str) -> str:
    name = claims.get(config.username_claim)
    return name if isinstance(name, str) and name else subject


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to pick the issuer and key, never trusted."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        header = dict(compact.protected)
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise _refused("format", f"not a well-formed JWT ({type(exc).__name__})") from None
    if not isinstance(claims, dict):
        raise _refused("format", "the JWT payload is not a JSON object")
    return header, claims
