"""Encryption of stored connection secrets (Fernet) and the pepper for API key hashes."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from control_plane.config import Settings


class SecretDecryptError(Exception):
    """A stored secret does not decrypt with the configured key (wrong or rotated PGWARD_SECRET_KEY)."""


class SecretBox:
    """Encrypts and decrypts connection secrets; plaintext never leaves through repr or logs."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        # A separate key for API key hashes, so neither use can be turned into the other.
        self.pepper = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"pgward api key pepper v1"
        ).derive(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(settings.secret_key_bytes())

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise SecretDecryptError(
                "a stored connection secret cannot be decrypted: PGWARD_SECRET_KEY differs from the key "
                "it was stored with"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
