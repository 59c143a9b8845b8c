"""Signatures of webhooks: Standard Webhooks (out and the generic callback in) and Slack's v0 scheme (in).

Standard Webhooks: the secret is `whsec_` + base64(key); `webhook-signature` is
`v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")).
Slack: `X-Slack-Signature` is `v0=` + hex(HMAC-SHA256(signing secret, "v0:{timestamp}:{body}")).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105  # the format's prefix, not a secret
# Requests whose timestamp is further than this from our clock are refused (replays, stale retries).
TIMESTAMP_TOLERANCE = 300


class SignatureError(Exception):
    """The request is not signed by who it claims, or is stale; the message says which."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "content-type": "application/json",
    }


def _timestamp(value: str | None, now: float) -> int:
    try:
        ts = int(value or "")
    except ValueError:
        raise SignatureError("missing or malformed timestamp") from None
    if abs(now - ts) > TIMESTAMP_TOLERANCE:
        raise SignatureError(f"timestamp is more than {TIMESTAMP_TOLERANCE} s away from pgward's clock")
    return ts


def verify_standard(
    secret: str,
    message_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
) -> None:
    """Check a Standard Webhooks signature (any of the space-separated `v1,` signatures may match)."""
    if not message_id or not signature:
        raise SignatureError("webhook-id and webhook-signature headers are required")
    ts = _timestamp(timestamp, now)
    expected = sign(secret, message_id, ts, body).encode()
    for candidate in signature.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError("signature does not match")


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(signing_secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


def verify_slack(
    signing_secret: str, timestamp: str | None, signature: str | None, body: bytes, *, now: float
) -> None:
    if not signature:
        raise SignatureError("X-Slack-Signature header is required")
    _timestamp(timestamp, now)
    expected = slack_signature(signing_secret, timestamp or "", body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SignatureError("Slack signature does not match")
