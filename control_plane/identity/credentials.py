"""The verified identity of a caller and the interface every credential verifier implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

BAD_CREDENTIALS = "28P01"  # invalid_password
NOT_AUTHORISED = "28000"  # invalid_authorization_specification


@dataclass(frozen=True)
class Identity:
    subject: str
    username: str
    groups: tuple[str, ...]
    issuer: str
    kind: str  # "service" | "person"
    credential: str  # "api_key" | "oidc" | …
    # The person an agent acts for (RFC 8693 `act`): the agent is this identity, the person is
    # recorded here so policies and the audit can see both.
    acting_for: Identity | None = None


class AuthError(Exception):
    """A refused credential. `message` goes to the client verbatim, so it never contains the secret."""

    def __init__(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint

    @classmethod
    def bad_credentials(cls, message: str, *, hint: str | None = None) -> AuthError:
        return cls(BAD_CREDENTIALS, message, hint=hint)

    @classmethod
    def not_authorised(cls, message: str, *, hint: str | None = None) -> AuthError:
        return cls(NOT_AUTHORISED, message, hint=hint)


class CredentialVerifier(Protocol):
    async def verify(self, user: str | None, secret: str) -> Identity:
        """Return the identity the secret proves, or raise AuthError.

        `user` is the name the client claimed (the StartupMessage `user`); it must match the
        identity's username. None means no name was claimed (an HTTP bearer token).
        """
        ...


class CompositeVerifier:
    """Routes a credential to the verifier for its shape (`pgw_…` → API key, three dotted segments → JWT)."""

    def __init__(self) -> None:
        self._routes: list[tuple[Callable[[str], bool], CredentialVerifier]] = []

    def register(self, matches: Callable[[str], bool], verifier: CredentialVerifier) -> None:
        self._routes.append((matches, verifier))

    async def verify(self, user: str | None, secret: str) -> Identity:
        for matches, verifier in self._routes:
            if matches(secret):
                return await verifier.verify(user, secret)
        raise AuthError.bad_credentials(
            "unrecognised credential",
            hint="use an OIDC token (`pgward token`) or a pgward API key (pgw_…) as the password",
        )
