"""RFC 9457 problem details: one base exception, the response schema, and the handlers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane.store.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PreconditionFailedError,
    RefusedError,
    StoreError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "urn:pgward:problem:"


class FieldError(BaseModel):
    pointer: str  # JSON pointer into the request body, or the parameter location
    loc: list[str | int]
    detail: str


class Problem(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise from an endpoint or dependency to answer with a problem-details body."""

    status: int = 500
    slug: str = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


class BadRequest(ProblemError):
    status, slug = 400, "bad-request"


class Unauthorized(ProblemError):
    status, slug = 401, "unauthorized"


class Forbidden(ProblemError):
    status, slug = 403, "forbidden"


class NotFound(ProblemError):
    status, slug = 404, "not-found"


class Conflict(ProblemError):
    status, slug = 409, "conflict"


class PreconditionFailed(ProblemError):
    status, slug = 412, "precondition-failed"


class PreconditionRequired(ProblemError):
    status, slug = 428, "precondition-required"


class UpstreamUnavailable(ProblemError):
    """A target database pgward had to reach could not be reached or read."""

    status, slug = 502, "upstream-unavailable"


# Listed in each router's `responses=` so the OpenAPI document shows the error schema.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": HTTPStatus(status).phrase}
    for status in (400, 401, 403, 404, 409, 412, 422)
}

_STORE_ERRORS: dict[type[StoreError], type[ProblemError]] = {
    NotFoundError: NotFound,
    AlreadyExistsError: Conflict,
    PreconditionFailedError: PreconditionFailed,
    InvalidInputError: BadRequest,
}


def problem_response(
    status: int,
    *,
    slug: str,
    detail: str | None,
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{_TYPE_BASE}{slug}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "instance": request.url.path,
    }
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _pointer(loc: tuple[str | int, ...]) -> str:
    if loc and loc[0] == "body":
        # JSON pointer escaping (RFC 6901) so odd field names stay unambiguous.
        return "/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in loc[1:])
    return ".".join(str(part) for part in loc)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status, slug=exc.slug, detail=exc.detail, request=request, headers=exc.headers, **exc.extra
    )


async def _on_store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    if isinstance(exc, RefusedError):
        return problem_response(exc.status, slug=exc.slug, detail=exc.message, request=request)
    problem = next(cls for kind, cls in _STORE_ERRORS.items() if isinstance(exc, kind))
    return problem_response(problem.status, slug=problem.slug, detail=exc.message, request=request)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # `input` is deliberately dropped: it could be a password or a whole body with one in it.
    errors = [
        {"pointer": _pointer(tuple(err["loc"])), "loc": list(err["loc"]), "detail": err["msg"]}
        for err in exc.errors()
    ]
    fields = ", ".join(e["pointer"] for e in errors)
    return problem_response(
        422, slug="validation", detail=f"invalid request: {fields}", request=request, errors=errors
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem_response(
        exc.status_code, slug=slug, detail=detail, request=request, headers=dict(exc.headers or {})
    )


def register_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StoreError, _on_store_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
