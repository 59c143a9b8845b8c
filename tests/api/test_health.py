"""Health probes, OpenAPI and problem details for unknown routes."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

pytestmark = pytest.mark.anyio


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_store_and_extra_checks(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"store": True}

    async def dataplane() -> bool:
        return False

    app.state.readiness_checks.append(dataplane)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"store": True, "dataplane": False}


async def test_readyz_without_store(app: FastAPI) -> None:
    from control_plane.store.db import create_engine, create_sessionmaker

    engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    app.state.sessionmaker = create_sessionmaker(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    await engine.dispose()
    assert response.status_code == 503
    assert response.json()["checks"]["store"] is False


async def test_openapi(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "/v1/connections/{name}" in document["paths"]
    assert "/v1/service-identities/{name}/keys" in document["paths"]
    assert "Problem" in document["components"]["schemas"]
    create = document["components"]["schemas"]["ConnectionCreate"]
    assert "password" in create["properties"]
    assert "password" not in document["components"]["schemas"]["ConnectionOut"]["properties"]


async def test_unknown_route_is_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    response = await client.patch("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
