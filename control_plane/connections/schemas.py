"""Request and response bodies of the connections API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
ResourceName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TlsMode = Literal["disable", "require", "verify-full"]


class ConnectionSpec(BaseModel):
    """Everything about a connection except its name (the PUT body; the name is in the path)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(min_length=1, max_length=63)
    username: str = Field(min_length=1, max_length=63)
    tls_mode: TlsMode = "verify-full"
    sslrootcert: str | None = Field(
        default=None, description="PEM text of the CA certificate(s) that sign the target's certificate"
    )
    password: SecretStr | None = Field(
        default=None,
        description="Write-only. Omitted on PUT: keep the stored password; null: remove it (trust auth).",
    )
    description: str = Field(default="", max_length=2000)

    @field_validator("sslrootcert")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            x509.load_pem_x509_certificates(value.encode())
        except ValueError:
            raise ValueError("sslrootcert must be the PEM text of one or more CA certificates") from None
        return value

    @field_validator("password")
    @classmethod
    def _password_length(cls, value: SecretStr | None) -> SecretStr | None:
        # A length check that never echoes the value (SecretStr keeps it out of error inputs too).
        if value is not None and not 0 < len(value.get_secret_value()) <= 1024:
            raise ValueError("password must be 1 to 1024 characters")
        return value


class ConnectionCreate(ConnectionSpec):
    name: ResourceName


class ConnectionOut(BaseModel):
    id: uuid.UUID
    name: str
    host: str
    port: int
    database: str
    username: str
    tls_mode: TlsMode
    sslrootcert: str | None
    has_password: bool
    description: str
    created_at: datetime
    updated_at: datetime
    version: int


class ConnectionList(BaseModel):
    items: list[ConnectionOut]
    next_cursor: str | None
