"""`/v1/policies` and `/v1/decisions/explain` on a real store: idempotent PUT, ETags, versions, problems."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

URL = "/v1/policies"


def doc(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "kind": "Policy",
        "name": "analysts",
        "subjects": {"groups": ["analysts"]},
        "connections": ["shop"],
        "rules": [{"allow": ["read"], "tables": ["shop.*"]}],
    }
    data.update(overrides)
    return data


async def test_put_is_idempotent_and_versioned(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.put(f"{URL}/analysts", json=doc(), headers=admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.headers["location"] == f"{URL}/analysts"
    etag = r.headers["etag"]
    again = await client.put(f"{URL}/analysts", json=doc(), headers=admin_headers)
    assert again.status_code == 200 and again.json()["version"] == 1 and again.headers["etag"] == etag
    changed = await client.put(
        f"{URL}/analysts",
        json=doc(rules=[{"allow": ["read", "copy_out"], "tables": ["shop.*"]}]),
        headers=admin_headers,
    )
    assert changed.json()["version"] == 2 and changed.headers["etag"] != etag
    versions = (await client.get(f"{URL}/analysts/versions", headers=admin_headers)).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["document"]["rules"][0]["allow"] == ["read"]
    listed = (await client.get(URL, headers=admin_headers)).json()
    assert [p["name"] for p in listed["items"]] == ["analysts"] and listed["next_cursor"] is None


async def test_if_match(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    r = await client.put(f"{URL}/analysts", json=doc(), headers=admin_headers)
    etag = r.headers["etag"]
    stale = await client.put(
        f"{URL}/analysts", json=doc(description="x"), headers={**admin_headers, "If-Match": '"nope-1"'}
    )
    assert stale.status_code == 412 and stale.headers["content-type"] == "application/problem+json"
    ok = await client.put(
        f"{URL}/analysts", json=doc(description="x"), headers={**admin_headers, "If-Match": etag}
    )
    assert ok.status_code == 200 and ok.json()["version"] == 2
    gone = await client.delete(f"{URL}/analysts", headers={**admin_headers, "If-Match": etag})
    assert gone.status_code == 412
    deleted = await client.delete(
        f"{URL}/analysts", headers={**admin_headers, "If-Match": ok.headers["etag"]}
    )
    assert deleted.status_code == 204
    assert (await client.get(f"{URL}/analysts", headers=admin_headers)).status_code == 404
    versions = (await client.get(f"{URL}/analysts/versions", headers=admin_headers)).json()["items"]
    assert versions[0]["document"] is None and versions[0]["version"] == 3
    # Re-created: the version continues, so an old ETag can never match again.
    again = await client.put(f"{URL}/analysts", json=doc(), headers=admin_headers)
    assert again.status_code == 201 and again.json()["version"] == 4


async def test_validation_problem_has_pointer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    bad = doc(rules=[{"allow": ["read"]}, {"allow": ["raed"], "tables": ["shop.*"]}])
    r = await client.put(f"{URL}/analysts", json=bad, headers=admin_headers)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    pointers = [e["pointer"] for e in r.json()["errors"]]
    assert "/rules/1/allow/0" in pointers
    r = await client.put(
        f"{URL}/analysts", json=doc(rules=[{"allow": ["read"], "tables": ["orders"]}]), headers=admin_headers
    )
    assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/rules/0/tables"
    mismatch = await client.put(f"{URL}/other", json=doc(), headers=admin_headers)
    assert mismatch.status_code == 400 and "analysts" in mismatch.json()["detail"]


async def test_admins_only(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    assert (await client.get(URL, headers=user_headers)).status_code == 403
    assert (await client.put(f"{URL}/analysts", json=doc(), headers=user_headers)).status_code == 403
    assert (await client.get(URL)).status_code == 401


async def test_explain(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await client.put(f"{URL}/analysts", json=doc(run_as="shop_reader"), headers=admin_headers)
    body = {
        "identity": {"username": "alice", "groups": ["analysts"]},
        "connection": "shop",
        "sql": "select * from shop.orders",
    }
    r = await client.post("/v1/decisions/explain", json=body, headers=admin_headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        out["session"]["allowed"]
        and out["session"]["read_only"]
        and out["session"]["run_as"] == "shop_reader"
    )
    d = out["decision"]
    assert (d["action"], d["policy"], d["rule"], d["classes"], d["tables"]) == (
        "allow",
        "analysts",
        "rules[0]",
        ["read"],
        ["shop.orders"],
    )
    body["sql"] = "update shop.orders set status = 'x' where id = 1"
    d = (await client.post("/v1/decisions/explain", json=body, headers=admin_headers)).json()["decision"]
    assert d["action"] == "deny" and d["sqlstate"] == "42501" and d["classes"] == ["write"]
    body["identity"] = {"username": "mallory", "groups": []}
    out = (await client.post("/v1/decisions/explain", json=body, headers=admin_headers)).json()
    assert not out["session"]["allowed"] and out["session"]["sqlstate"] == "28000"
