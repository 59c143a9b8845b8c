"""Domain errors raised by services; the API maps each to a problem-details response."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors services raise; `message` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(StoreError):
    pass


class AlreadyExistsError(StoreError):
    pass


class PreconditionFailedError(StoreError):
    """If-Match did not match the current version."""


class InvalidInputError(StoreError):
    pass


class RefusedError(StoreError):
    """A request that is understood but refused; `status` and `slug` say which problem it is."""

    status = 409
    slug = "conflict"

    def __init__(self, message: str, *, status: int | None = None, slug: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
