"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from control_plane.api import (
    approvals,
    audit,
    connections,
    decisions,
    health,
    integrations,
    me,
    policies,
    service_identities,
    sessions,
    webhooks,
)
from control_plane.api.health import ReadinessCheck
from control_plane.api.problems import register_problem_handlers
from control_plane.config import Settings
from control_plane.identity.api_keys import default_verifier
from control_plane.identity.credentials import CredentialVerifier
from control_plane.store.crypto import SecretBox
from control_plane.store.db import SessionMaker

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings,
    sessionmaker: SessionMaker,
    *,
    lifespan: Lifespan | None = None,
    verifier: CredentialVerifier | None = None,
    readiness_checks: Sequence[ReadinessCheck] = (),
) -> FastAPI:
    """Build the API. `lifespan` wraps the app's life (e.g. start/stop the data plane);
    `app.state.readiness_checks` may be appended to until the first /readyz."""

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        if lifespan is None:
            yield
            return
        async with lifespan(app):
            yield

    app = FastAPI(
        title="pgward",
        summary="Access gateway for PostgreSQL",
        version="0.1.0",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker
    # Resolved now so a missing secret key fails at start-up, not on the first request.
    app.state.secret_box = SecretBox.from_settings(settings)
    app.state.verifier = verifier or default_verifier(sessionmaker, settings)
    app.state.readiness_checks = list(readiness_checks)
    register_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(connections.router)
    app.include_router(service_identities.router)
    app.include_router(policies.router)
    app.include_router(decisions.router)
    app.include_router(me.router)
    app.include_router(audit.router)
    app.include_router(sessions.router)
    app.include_router(approvals.reviews_router)
    app.include_router(approvals.requests_router)
    app.include_router(webhooks.router)
    app.include_router(integrations.router)
    return app
