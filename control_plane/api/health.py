"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from control_plane.api.deps import get_sessionmaker
from control_plane.store.repositories import ping

ReadinessCheck = Callable[[], Awaitable[bool]]
_CHECK_TIMEOUT = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: answers while the process runs; never touches dependencies."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the store answers `SELECT 1` and every registered check (e.g. the data plane) passes."""
    checks: dict[str, bool] = {"store": await _store_ready(request)}
    extra: list[ReadinessCheck] = request.app.state.readiness_checks
    for index, check in enumerate(extra):
        name = getattr(check, "__name__", f"check_{index}")
        checks[name] = await _run(check)
    ready = all(checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _store_ready(request: Request) -> bool:
    async def check() -> bool:
        async with get_sessionmaker(request)() as session:
            return await ping(session)

    return await _run(check)


async def _run(check: ReadinessCheck) -> bool:
    # A probe must answer promptly whatever a dependency does, so every failure means "not ready".
    try:
        return bool(await asyncio.wait_for(check(), _CHECK_TIMEOUT))
    except Exception:
        return False
