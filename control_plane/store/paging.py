"""Opaque keyset cursors for list endpoints (`{"items": […], "next_cursor": …}`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from control_plane.store.errors import InvalidInputError

T = TypeVar("T")


def encode_cursor(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        # validate=True: a mangled cursor must be an error, not silently a different position.
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInputError("invalid cursor: pass next_cursor from a previous page unchanged") from None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


class Named(Protocol):
    name: str


N = TypeVar("N", bound=Named)


def page_of(rows: Sequence[N], limit: int) -> Page[N]:
    """Rows were fetched with limit + 1: the extra row only tells whether another page exists."""
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    return Page(items=items, next_cursor=encode_cursor(items[-1].name))
