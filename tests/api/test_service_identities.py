"""`/v1/service-identities`: keys shown once, usable with ApiKeyVerifier, rotation and deletion."""

from __future__ import annotations

import logging

import httpx
import pytest

from control_plane.config import Settings
from control_plane.identity.api_keys import ApiKeyVerifier
from control_plane.identity.credentials import AuthError
from control_plane.store.db import SessionMaker
from tests.api.helpers import bearer

pytestmark = pytest.mark.anyio

URL = "/v1/service-identities"


async def test_anonymous_and_non_admin(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    assert (await client.post(URL, json={"name": "x"})).status_code == 401
    assert (await client.get(URL)).status_code == 401
    assert (await client.get(URL, headers=user_headers)).status_code == 403
    assert (await client.post(f"{URL}/ci/keys", headers=user_headers)).status_code == 403


async def test_key_shown_once_and_verifiable(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    sessionmaker: SessionMaker,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await client.post(
        URL, json={"name": "agent", "groups": ["agents", "agents"]}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "agent"
    assert created["groups"] == ["agents"]
    key = created["api_key"]
    assert key.startswith("pgw_")

    one = await client.get(f"{URL}/agent", headers=admin_headers)
    many = await client.get(URL, headers=admin_headers)
    for response in (one, many):
        assert response.status_code == 200
        assert key not in response.text
        assert key.split("_", 2)[2] not in response.text
    assert one.json()["keys"][0]["key_id"] == created["key_id"]
    assert [i["name"] for i in many.json()["items"]] == ["agent", "root"]

    identity = await ApiKeyVerifier(sessionmaker, settings).verify("agent", key)
    assert identity.groups == ("agents",)
    assert key not in caplog.text


async def test_rotate_invalidates_old_key(
    client: httpx.AsyncClient, admin_headers: dict[str, str], sessionmaker: SessionMaker, settings: Settings
) -> None:
    old = (await client.post(URL, json={"name": "ci", "groups": ["ci"]}, headers=admin_headers)).json()
    response = await client.post(f"{URL}/ci/keys", headers=admin_headers)
    assert response.status_code == 201
    new = response.json()
    assert new["api_key"] != old["api_key"]
    verifier = ApiKeyVerifier(sessionmaker, settings)
    assert (await verifier.verify("ci", new["api_key"])).username == "ci"
    with pytest.raises(AuthError) as info:
        await verifier.verify("ci", old["api_key"])
    assert info.value.sqlstate == "28P01"
    assert old["api_key"] not in info.value.message
    keys = (await client.get(f"{URL}/ci", headers=admin_headers)).json()["keys"]
    assert [k["revoked_at"] is not None for k in keys] == [True, False]
    assert (await client.post(f"{URL}/nope/keys", headers=admin_headers)).status_code == 404


async def test_delete_revokes(
    client: httpx.AsyncClient, admin_headers: dict[str, str], sessionmaker: SessionMaker, settings: Settings
) -> None:
    key = (await client.post(URL, json={"name": "ci", "groups": ["admins"]}, headers=admin_headers)).json()[
        "api_key"
    ]
    assert (await client.get(URL, headers=bearer(key))).status_code == 200
    assert (await client.delete(f"{URL}/ci", headers=admin_headers)).status_code == 204
    assert (await client.get(f"{URL}/ci", headers=admin_headers)).status_code == 404
    assert (await client.get(URL, headers=bearer(key))).status_code == 401
    with pytest.raises(AuthError):
        await ApiKeyVerifier(sessionmaker, settings).verify("ci", key)
    assert (await client.delete(f"{URL}/ci", headers=admin_headers)).status_code == 404


async def test_duplicate_and_validation(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    assert (await client.post(URL, json={"name": "ci"}, headers=admin_headers)).status_code == 201
    assert (await client.post(URL, json={"name": "ci"}, headers=admin_headers)).status_code == 409
    response = await client.post(URL, json={"name": "ci two", "groups": ["ok", ""]}, headers=admin_headers)
    assert response.status_code == 422
    assert sorted(e["pointer"] for e in response.json()["errors"]) == ["/groups/1", "/name"]
