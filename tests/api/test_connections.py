"""`/v1/connections`: auth, CRUD, idempotent PUT with ETags, write-only passwords, problem details."""

from __future__ import annotations

import logging

import httpx
import pytest

from control_plane.config import Settings
from control_plane.connections.service import get_connection_for_session
from control_plane.store.db import SessionMaker

pytestmark = pytest.mark.anyio

PASSWORD = "s3cr3t-Upstream-Pa55word"
URL = "/v1/connections"


def body(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "shop",
        "host": "db.internal",
        "port": 5432,
        "database": "shop",
        "username": "app",
        "tls_mode": "require",
        "password": PASSWORD,
        "description": "the shop",
    }
    data.update(overrides)
    return data


def spec(**overrides: object) -> dict[str, object]:
    data = body(**overrides)
    del data["name"]
    return data


class TestAuth:
    async def test_anonymous_is_401(self, client: httpx.AsyncClient) -> None:
        for method, url in (("GET", URL), ("POST", URL), ("GET", f"{URL}/shop"), ("PUT", f"{URL}/shop")):
            response = await client.request(method, url, json=spec())
            assert response.status_code == 401, (method, url)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["status"] == 401

    async def test_bad_credential_is_401(self, client: httpx.AsyncClient) -> None:
        for token in ("pgw_0123456789ab_" + "x" * 43, "garbage", "pgw_"):
            response = await client.get(URL, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
            assert token not in response.text

    async def test_non_admin_is_403(self, client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
        response = await client.get(URL, headers=user_headers)
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert "admins" in response.json()["detail"]
        response = await client.post(URL, json=body(), headers=user_headers)
        assert response.status_code == 403


class TestCreate:
    async def test_create_get_list(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        response = await client.post(URL, json=body(), headers=admin_headers)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["has_password"] is True
        assert "password" not in created
        assert created["version"] == 1
        assert response.headers["location"] == f"{URL}/shop"
        etag = response.headers["etag"]

        response = await client.get(f"{URL}/shop", headers=admin_headers)
        assert response.status_code == 200
        assert response.json() == created
        assert response.headers["etag"] == etag

        response = await client.get(URL, headers=admin_headers)
        assert response.json() == {"items": [created], "next_cursor": None}

    async def test_duplicate_is_409(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        assert (await client.post(URL, json=body(), headers=admin_headers)).status_code == 201
        response = await client.post(URL, json=body(), headers=admin_headers)
        assert response.status_code == 409
        assert response.json()["type"] == "urn:pgward:problem:conflict"

    async def test_trust_connection(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        response = await client.post(URL, json=body(password=None), headers=admin_headers)
        assert response.json()["has_password"] is False

    async def test_missing_is_404(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        response = await client.get(f"{URL}/nope", headers=admin_headers)
        assert response.status_code == 404
        problem = response.json()
        assert problem["title"] == "Not Found"
        assert "nope" in problem["detail"]
        assert problem["instance"] == f"{URL}/nope"


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value"),
        [("port", "abc"), ("port", 70000), ("tls_mode", "bogus"), ("name", "bad name"), ("sslrootcert", "x")],
    )
    async def test_bad_field_is_422_with_path(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str], field: str, value: object
    ) -> None:
        response = await client.post(URL, json=body(**{field: value}), headers=admin_headers)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 422
        assert problem["type"] == "urn:pgward:problem:validation"
        assert [e["pointer"] for e in problem["errors"]] == [f"/{field}"]
        assert problem["errors"][0]["loc"] == ["body", field]
        assert PASSWORD not in response.text

    async def test_bad_password_is_not_echoed(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        long_password = "P" * 2000
        response = await client.post(URL, json=body(password=long_password), headers=admin_headers)
        assert response.status_code == 422
        assert long_password not in response.text
        response = await client.post(URL, json=[PASSWORD], headers=admin_headers)
        assert response.status_code == 422
        assert PASSWORD not in response.text

    async def test_unknown_field_is_422(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        response = await client.post(URL, json=body(passwd="x"), headers=admin_headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "/passwd"

    async def test_bad_query_parameter(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        response = await client.get(URL, params={"limit": 0}, headers=admin_headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["query", "limit"]
        response = await client.get(URL, params={"cursor": "%%%"}, headers=admin_headers)
        assert response.status_code == 400


class TestPut:
    async def test_put_creates_then_is_idempotent(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        first = await client.put(f"{URL}/shop", json=spec(), headers=admin_headers)
        assert first.status_code == 201, first.text
        second = await client.put(f"{URL}/shop", json=spec(), headers=admin_headers)
        assert second.status_code == 200
        assert second.json() == first.json()
        assert second.json()["version"] == 1
        assert second.headers["etag"] == first.headers["etag"]

    async def test_put_changes_bump_version(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        first = await client.put(f"{URL}/shop", json=spec(), headers=admin_headers)
        changed = await client.put(f"{URL}/shop", json=spec(port=6432), headers=admin_headers)
        assert changed.json()["version"] == 2
        assert changed.json()["port"] == 6432
        assert changed.headers["etag"] != first.headers["etag"]
        # A new password is a change too; the same one again is not.
        rotated = await client.put(
            f"{URL}/shop", json=spec(port=6432, password="other"), headers=admin_headers
        )
        assert rotated.json()["version"] == 3
        again = await client.put(f"{URL}/shop", json=spec(port=6432, password="other"), headers=admin_headers)
        assert again.json()["version"] == 3

    async def test_omitted_password_is_kept_null_removes(
        self,
        client: httpx.AsyncClient,
        admin_headers: dict[str, str],
        sessionmaker: SessionMaker,
        settings: Settings,
    ) -> None:
        await client.put(f"{URL}/shop", json=spec(), headers=admin_headers)
        without = spec()
        del without["password"]
        kept = await client.put(f"{URL}/shop", json=without, headers=admin_headers)
        assert kept.json()["has_password"] is True
        assert kept.json()["version"] == 1
        async with sessionmaker() as session:
            target = await get_connection_for_session(session, "shop", settings=settings)
        assert target is not None and target.password == PASSWORD
        removed = await client.put(f"{URL}/shop", json=spec(password=None), headers=admin_headers)
        assert removed.json()["has_password"] is False
        assert removed.json()["version"] == 2

    async def test_if_match(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        first = await client.put(f"{URL}/shop", json=spec(), headers=admin_headers)
        etag = first.headers["etag"]
        ok = await client.put(f"{URL}/shop", json=spec(port=1), headers={**admin_headers, "If-Match": etag})
        assert ok.status_code == 200
        stale = await client.put(
            f"{URL}/shop", json=spec(port=2), headers={**admin_headers, "If-Match": etag}
        )
        assert stale.status_code == 412
        assert stale.headers["content-type"] == "application/problem+json"
        assert (await client.get(f"{URL}/shop", headers=admin_headers)).json()["port"] == 1
        star = await client.put(f"{URL}/shop", json=spec(port=3), headers={**admin_headers, "If-Match": "*"})
        assert star.status_code == 200
        # If-Match on something that does not exist fails too (RFC 9110).
        missing = await client.put(f"{URL}/other", json=spec(), headers={**admin_headers, "If-Match": "*"})
        assert missing.status_code == 412

    async def test_put_validates(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        response = await client.put(f"{URL}/shop", json=spec(tls_mode="bogus"), headers=admin_headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "/tls_mode"


class TestDelete:
    async def test_delete(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        created = await client.post(URL, json=body(), headers=admin_headers)
        stale = await client.delete(f"{URL}/shop", headers={**admin_headers, "If-Match": '"0-0"'})
        assert stale.status_code == 412
        response = await client.delete(
            f"{URL}/shop", headers={**admin_headers, "If-Match": created.headers["etag"]}
        )
        assert response.status_code == 204
        assert (await client.get(f"{URL}/shop", headers=admin_headers)).status_code == 404
        assert (await client.delete(f"{URL}/shop", headers=admin_headers)).status_code == 404


async def test_pagination(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    names = [f"db{i:02d}" for i in range(7)]
    for name in reversed(names):
        assert (await client.post(URL, json=body(name=name), headers=admin_headers)).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(URL, params=params, headers=admin_headers)).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


async def test_password_never_leaves(
    client: httpx.AsyncClient, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The password is absent from every response body and every log record of a full lifecycle."""
    caplog.set_level(logging.DEBUG)
    responses = [
        await client.post(URL, json=body(), headers=admin_headers),
        await client.get(URL, headers=admin_headers),
        await client.get(f"{URL}/shop", headers=admin_headers),
        await client.put(f"{URL}/shop", json=spec(), headers=admin_headers),
        await client.put(f"{URL}/shop", json=spec(port="abc"), headers=admin_headers),
        await client.post(URL, json=body(), headers=admin_headers),
        await client.put(f"{URL}/shop", json=spec(port=1), headers={**admin_headers, "If-Match": '"x"'}),
        await client.delete(f"{URL}/shop", headers=admin_headers),
    ]
    assert [r.status_code for r in responses] == [201, 200, 200, 200, 422, 409, 412, 204]
    for response in responses:
        assert PASSWORD not in response.text
        assert PASSWORD not in str(response.headers)
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in str(record.args) for record in caplog.records)
