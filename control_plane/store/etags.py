"""ETags and If-Match for versioned store rows (connections, policies)."""

from __future__ import annotations

import uuid
from typing import Protocol


class Versioned(Protocol):
    id: uuid.UUID
    version: int


def etag(row: Versioned) -> str:
    # The id is part of the tag so a deleted and re-created resource never matches an old tag.
    return f'"{row.id.hex[:12]}-{row.version}"'


def if_match_ok(if_match: str | None, current: Versioned | None) -> bool:
    """RFC 9110 If-Match with strong comparison; no header always passes."""
    if if_match is None:
        return True
    if current is None:
        return False
    tags = [tag.strip() for tag in if_match.split(",")]
    return "*" in tags or etag(current) in tags
