"""`pgward connections propose-tags` and `POST /v1/connections/NAME/tag-proposals` against the demo-like
target: the same Rust detectors sample shop.customers and propose its PII columns' tags."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import yaml

from control_plane.policy.documents import PolicyDocument
from tests.fixtures.gateway import PGWARD
from tests.masking.conftest import ClearValues
from tests.policy.conftest import PolicyGateway

EXPECTED = {
    "shop.customers.email": ["pii.email"],
    "shop.customers.phone": ["pii.phone"],
    "shop.customers.ssn": ["pii.ssn"],
    "shop.customers.card_number": ["pii.card"],
}


def propose(pg: PolicyGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PGWARD, "connections", "propose-tags", *args],
        env=pg.gw.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_proposes_the_pii_columns(masking_gateway: PolicyGateway, clear_values: ClearValues) -> None:
    r = propose(masking_gateway, "shop", "--sample", "50")
    assert r.returncode == 0, r.stderr
    snippet = yaml.safe_load(r.stdout)
    assert snippet == {"column_tags": EXPECTED}
    assert "# email 100% of 50" in r.stdout
    # Counts only: no sampled value is ever printed.
    assert not clear_values.leaks(r.stdout.splitlines())
    # The snippet is a valid part of a policy document.
    doc = PolicyDocument.model_validate(
        {
            "name": "proposed",
            "subjects": {"groups": ["analysts"]},
            "connections": ["shop"],
            "rules": [{"allow": ["read"]}],
            "masking": [{"tags": ["pii.ssn"], "function": "hash"}],
            **snippet,
        }
    )
    assert doc.column_tags == EXPECTED

    as_json = propose(masking_gateway, "shop", "--sample", "20", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    by_column = {c["column"]: c for c in data["columns"]}
    assert by_column["shop.customers.ssn"]["hits"] == {"ssn": 20}
    assert by_column["shop.customers.ssn"]["sampled"] == 20
    assert "shop.customers.name" not in by_column


def test_cli_refuses_unknown_connections_and_bad_samples(masking_gateway: PolicyGateway) -> None:
    r = propose(masking_gateway, "nope")
    assert r.returncode == 1 and 'no connection named "nope"' in r.stderr
    r = propose(masking_gateway, "shop", "--sample", "0")
    assert r.returncode == 2 and "--sample" in r.stderr


def test_api_proposes_for_admins_only(masking_gateway: PolicyGateway) -> None:
    gw = masking_gateway.gw
    with gw.api() as api:
        r = api.post("/v1/connections/shop/tag-proposals", json={"sample": 30, "min_rate": 0.5})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert {c["column"]: c["tags"] for c in body["columns"]} == EXPECTED
        assert body["skipped"] == []
        assert yaml.safe_load(body["yaml"]) == {"column_tags": EXPECTED}
        assert api.post("/v1/connections/nope/tag-proposals").status_code == 404
        assert api.post("/v1/connections/shop/tag-proposals", json={"sample": 0}).status_code == 422
    alice = masking_gateway.tokens["alice"]
    r = httpx.post(
        f"{gw.api_url}/v1/connections/shop/tag-proposals",
        headers={"Authorization": f"Bearer {alice}"},
        timeout=30,
    )
    assert r.status_code == 403
