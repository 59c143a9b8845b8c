"""`pgward plan` / `pgward apply`: the difference between files and a pgward server, through the REST API."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from control_plane.policy.files import Bundle

_CONNECTION_FIELDS = ("host", "port", "database", "username", "tls_mode", "sslrootcert", "description")
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "port": 5432,
    "tls_mode": "verify-full",
    "sslrootcert": None,
    "description": "",
}


class PlanError(Exception):
    """The plan cannot be made or applied; the message says why."""


@dataclass
class Change:
    kind: str  # policy | connection | service identity
    name: str
    action: str  # create | update | delete | unchanged | blocked | unmanaged
    fields: list[str] = field(default_factory=list)
    reason: str = ""
    body: dict[str, Any] | None = None

    def line(self) -> str:
        mark = {
            "create": "+",
            "update": "~",
            "delete": "-",
            "unchanged": "=",
            "blocked": "!",
            "unmanaged": "?",
        }
        text = f"{mark[self.action]} {self.kind} {self.name}"
        if self.action == "update":
            text += f" (changes: {', '.join(self.fields)})"
        elif self.action not in ("unchanged",):
            text += f" ({self.reason or self.action})"
        return text


@dataclass
class Plan:
    changes: list[Change]

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.action in ("create", "update", "delete")]

    @property
    def blocked(self) -> list[Change]:
        return [c for c in self.changes if c.action == "blocked"]


class Api:
    def __init__(self, url: str, token: str, *, timeout: float = 30) -> None:
        self.client = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PlanError(f"cannot reach the pgward API at {self.client.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
                detail = problem.get("detail") or problem.get("title")
                errors = problem.get("errors") or []
                if errors:
                    detail += ": " + "; ".join(f"{e.get('pointer')}: {e.get('detail')}" for e in errors)
            except ValueError:
                detail = response.text[:500]
            raise PlanError(f"{method} {path}: {response.status_code} {detail}")
        return response

    def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", path, params=params).json()
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def make_plan(api: Api, bundle: Bundle, *, prune: bool = False) -> Plan:
    changes: list[Change] = []
    changes += _connections(api, bundle)
    changes += _identities(api, bundle)
    changes += _policies(api, bundle, prune)
    return Plan(changes)


def _connections(api: Api, bundle: Bundle) -> list[Change]:
    server = {c["name"]: c for c in api.list_all("/v1/connections")} if bundle.connections else {}
    out = []
    for name, spec in sorted(bundle.connections.items()):
        body = {
            k: spec.get(k, _CONNECTION_DEFAULTS.get(k))
            for k in _CONNECTION_FIELDS
            if k in spec or k in _CONNECTION_DEFAULTS
        }
        unknown = set(spec) - set(_CONNECTION_FIELDS) - {"name", "password_env"}
        if unknown:
            raise PlanError(f"connection {name}: unknown fields {', '.join(sorted(unknown))}")
        env = spec.get("password_env")
        if env:
            password = os.environ.get(env)
            if not password:
                raise PlanError(f"connection {name}: password_env {env} is not set in the environment")
            body["password"] = password
        current = server.get(name)
        if current is None:
            out.append(Change("connection", name, "create", body=body))
            continue
        diff = [k for k in _CONNECTION_FIELDS if k in body and body[k] != current.get(k)]
        if env and not current.get("has_password"):
            diff.append("password")
        # The stored password cannot be read back; it is sent on every apply and the server keeps the
        # version when it is the same.
        out.append(Change("connection", name, "update" if diff else "unchanged", diff, body=body))
    return out


def _identities(api: Api, bundle: Bundle) -> list[Change]:
    server = (
        {i["name"]: i for i in api.list_all("/v1/service-identities")} if bundle.service_identities else {}
    )
    out = []
    for name, spec in sorted(bundle.service_identities.items()):
        groups = list(dict.fromkeys(spec.get("groups") or []))
        body = {"name": name, "groups": groups, "description": spec.get("description", "")}
        current = server.get(name)
        if current is None:
            out.append(Change("service identity", name, "create", body=body))
        elif list(current["groups"]) != groups:
            out.append(
                Change(
                    "service identity",
                    name,
                    "blocked",
                    reason=f"groups differ (server: {current['groups']}, files: {groups}); "
                    "the API cannot change "
                    "them yet: delete and re-create the identity",
                )
            )
        else:
            out.append(Change("service identity", name, "unchanged"))
    return out


def _policies(api: Api, bundle: Bundle, prune: bool) -> list[Change]:
    server = {p["name"]: p for p in api.list_all("/v1/policies")}
    out = []
    for name, doc in sorted(bundle.policies.items()):
        spec = doc.spec()
        current = server.get(name)
        if current is None:
            out.append(Change("policy", name, "create", body=spec))
        elif current["document"] != spec:
            fields = sorted(k for k in spec if spec.get(k) != current["document"].get(k))
            out.append(Change("policy", name, "update", fields, body=spec))
        else:
            out.append(Change("policy", name, "unchanged"))
    for name in sorted(set(server) - set(bundle.policies)):
        if prune:
            out.append(Change("policy", name, "delete", reason="not in the files (--prune)"))
        else:
            out.append(
                Change(
                    "policy", name, "unmanaged", reason="on the server, not in the files; --prune deletes it"
                )
            )
    return out


def apply_plan(api: Api, plan: Plan) -> list[str]:
    """Apply the pending changes; returns messages to show (new API keys among them)."""
    if plan.blocked:
        raise PlanError("; ".join(c.line() for c in plan.blocked))
    notes: list[str] = []
    for change in plan.pending:
        if change.kind == "connection":
            api.request("PUT", f"/v1/connections/{change.name}", json=change.body)
        elif change.kind == "service identity":
            created = api.request("POST", "/v1/service-identities", json=change.body).json()
            notes.append(f"service identity {change.name}: API key (shown once) {created['api_key']}")
        elif change.action == "delete":
            api.request("DELETE", f"/v1/policies/{change.name}")
        else:
            api.request("PUT", f"/v1/policies/{change.name}", json=change.body)
        notes.append(change.line())
    return notes
