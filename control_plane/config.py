"""pgward settings, read from PGWARD_* environment variables."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
SECRET_KEY_FILE = "secret.key"  # noqa: S105  # a file name, not a secret


class ConfigError(Exception):
    """The configuration cannot work as given; the message says what to change."""


def _default_state_dir() -> Path:
    return Path("~/.local/state/pgward").expanduser()


def _split_list(value: Any) -> Any:
    # Lists come from the environment either as JSON (`["a","b"]`) or, friendlier for
    # shells and compose files, comma-separated (`a,b`).
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServiceSubject(BaseModel):
    """Maps tokens whose `sub` matches a glob (`subject`) or regex (`subject_regex`) to a service identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str | None = None
    subject_regex: str | None = None
    identity: str = Field(min_length=1, max_length=128)
    # None: the groups of the stored service identity of that name, else the token's groups claim.
    groups: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_pattern(self) -> ServiceSubject:
        if (self.subject is None) == (self.subject_regex is None):
            raise ValueError("give exactly one of `subject` (a glob) and `subject_regex`")
        if self.subject_regex is not None:
            import re

            try:
                re.compile(self.subject_regex)
            except re.error as exc:
                raise ValueError(f"subject_regex does not compile: {exc}") from None
        return self


class OidcIssuer(BaseModel):
    """One trusted OpenID Connect issuer (an entry of PGWARD_OIDC_ISSUERS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    ca_file: Path | None = None
    service_subjects: tuple[ServiceSubject, ...] = ()

    @field_validator("issuer", mode="after")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        from urllib.parse import urlsplit

        url = urlsplit(value)
        # Plain HTTP would let anyone on the path swap the signing keys; loopback is for development.
        loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError(f"issuer {value!r} must be an https:// URL (http:// only on loopback)")
        return value


class Settings(BaseSettings):
    """Every pgward setting; `PGWARD_<FIELD>` in the environment overrides the default."""

    model_config = SettingsConfigDict(env_prefix="PGWARD_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    database_url: str | None = None
    secret_key: SecretStr | None = None
    dev_mode: bool = False
    proxy_listen: str = "127.0.0.1:6543"
    api_listen: str = "127.0.0.1:8080"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = False
    max_message_size: int = 128 * MiB
    deny_statements: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_groups: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["admins"])
    approver_groups: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["approvers"])
    auditor_groups: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auditors"])
    public_url: str | None = None
    # Session recording (docs/recording.md): every session's traffic, after masking, to files named
    # by the session id. A recording that cannot be written ends its session (fail closed).
    recording: Literal["on", "off"] = "on"
    # Default: `state_dir/recordings`.
    recording_dir: Path | None = None
    # zstd level for recording blocks (1 = fastest; the writer runs beside the sessions).
    recording_level: int = Field(default=1, ge=1, le=19)
    # Seconds between checks for policy changes made by other pgward processes (same process: at once).
    policy_poll_interval: float = Field(default=2.0, gt=0, le=300)
    # JSON list of OidcIssuer objects.
    oidc_issuers: list[OidcIssuer] = Field(default_factory=list)
    oidc_clock_skew: float = Field(default=60.0, ge=0, le=600)
    # An unknown `kid` refetches an issuer's JWKS at most once per this many seconds.
    oidc_jwks_refresh_interval: float = Field(default=30.0, ge=0)
    oidc_http_timeout: float = Field(default=5.0, gt=0)
    # Failed logins from one client address: no delay for the first `grace` failures, then
    # base * 2^k seconds before each answer, at most `max`; the failure count halves every `halflife`.
    login_throttle_grace: int = Field(default=2, ge=0)
    login_throttle_base: float = Field(default=0.25, ge=0)
    login_throttle_max: float = Field(default=5.0, ge=0, le=25)
    login_throttle_halflife: float = Field(default=60.0, gt=0)
    # The audit log (docs/audit.md). `buffered`: records are committed in batches, a crash can lose
    # the records not yet committed; `strict`: a statement goes upstream only after its record is
    # committed; `off`: no audit records.
    audit_mode: Literal["buffered", "strict", "off"] = "buffered"
    # Records the data plane holds for the control plane before sessions wait (back-pressure).
    audit_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # Records the control plane holds in memory before it stops taking more from the data plane.
    audit_buffer_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # Buffered mode: seconds between commits of the records gathered meanwhile.
    audit_flush_interval: float = Field(default=0.1, ge=0, le=10)
    # Seconds between signed checkpoints of the chain head (also one at shutdown).
    audit_checkpoint_interval: float = Field(default=60.0, gt=0)
    # Strict mode: a statement whose record is not committed within this many seconds is refused.
    audit_strict_timeout: float = Field(default=10.0, gt=0)
    # Record the values of Bind parameters (masked like results) for every session.
    audit_parameters: bool = False
    # SIEM sink: `udp://host:port` or `tcp://host:port` (syslog, RFC 5424); empty: none.
    audit_syslog: str | None = None
    # `pgward audit prune` without --before removes records older than this many days.
    audit_retention_days: int | None = Field(default=None, ge=1)
    # Approvals (docs/approvals.md). Outgoing webhooks: attempt k waits base * 4^(k-1) s after a failure.
    webhook_retry_base: float = Field(default=5.0, gt=0, le=3600)
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    # Seconds between sweeps that expire undecided reviews and requests and end grants.
    approvals_sweep_interval: float = Field(default=1.0, gt=0, le=60)
    # A held statement checks its review this often even without a notification (LISTEN/NOTIFY).
    hold_poll_interval: float = Field(default=2.0, gt=0, le=60)
    # Slack interactions: the app's signing secret and Slack user id → pgward username.
    slack_signing_secret: SecretStr | None = None
    slack_users: dict[str, str] = Field(default_factory=dict)
    # Signed decision callbacks: integration name → its whsec_ secret (POST /v1/integrations/NAME/decisions).
    decision_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # A chat decision counts only if pgward saw the approver's groups (a sign-in) within this many seconds.
    chat_identity_max_age: float = Field(default=86400.0, gt=0)

    _split_lists = field_validator(
        "deny_statements", "admin_groups", "approver_groups", "auditor_groups", mode="before"
    )(_split_list)

    @field_validator("state_dir", mode="after")
    @classmethod
    def _expand_state_dir(cls, value: Path) -> Path:
        return value.expanduser()

    def require_database_url(self) -> str:
        """The metadata store URL, or a ConfigError when nothing has set it yet."""
        if not self.database_url:
            raise ConfigError(
                "no metadata store configured: set PGWARD_DATABASE_URL "
                "(e.g. postgresql+psycopg://user:pass@host:5432/pgward) or use `pgward demo`"
            )
        return self.database_url

    @property
    def base_url(self) -> str:
        """Where people reach the API (review URLs): PGWARD_PUBLIC_URL, else the API listen address."""
        return (self.public_url or f"http://{self.api_listen}").rstrip("/")

    @property
    def recordings_path(self) -> Path:
        return (self.recording_dir or self.state_dir / "recordings").expanduser()

    @property
    def secret_key_path(self) -> Path:
        return self.state_dir / SECRET_KEY_FILE

    def secret_key_bytes(self) -> bytes:
        """The Fernet key for stored credentials: from PGWARD_SECRET_KEY or `state_dir/secret.key`.

        The key file is created (mode 0600) only in dev mode; in production a missing key is an
        error, because a silently generated key would make existing secrets unreadable.
        """
        if self.secret_key is not None:
            return _checked_key(self.secret_key.get_secret_value().encode(), "PGWARD_SECRET_KEY")
        path = self.secret_key_path
        if path.exists():
            return _checked_key(path.read_bytes().strip(), str(path))
        if not self.dev_mode:
            raise ConfigError(
                "no secret key: set PGWARD_SECRET_KEY to a Fernet key (python -c "
                '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())") '
                f"or create {path}; it is generated automatically only with PGWARD_DEV_MODE=true"
            )
        return _create_key_file(path)


def _checked_key(key: bytes, source: str) -> bytes:
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the secret key in {source} is not a valid Fernet key (32 url-safe base64 bytes)"
        ) from exc
    return key


def _create_key_file(path: Path) -> bytes:
    from cryptography.fernet import Fernet

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Fernet.generate_key()
    try:
        # O_EXCL: two processes starting at once must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _checked_key(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings from the environment; tests build `Settings(...)` directly instead."""
    return Settings()
