"""`pgward approvals list|show|approve|deny` and `pgward request-access`: the approvals API from a shell."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

approvals_app = typer.Typer(
    no_args_is_help=True, help="Reviews and access requests: list, show, approve, deny."
)

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="PGWARD_API_URL", help="The pgward API.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="PGWARD_TOKEN", help="Your credential (API key or OIDC token)."),
]
Kind = Annotated[
    str, typer.Option("--kind", help="review or access-request (default: whichever the id names).")
]
Comment = Annotated[
    str | None, typer.Option("--comment", "-m", help="Shown to the requester and in the audit.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _client(api_url: str, token: str | None) -> httpx.Client:
    if not token:
        _fail("no credential: pass --token or set PGWARD_TOKEN")
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"could not reach the pgward API at {client.base_url}: {exc}")
    if response.status_code >= 400:
        try:
            problem = response.json()
            _fail(f"{problem.get('detail') or problem.get('title')} ({response.status_code})")
        except ValueError:
            _fail(f"HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def _find(client: httpx.Client, item_id: str, kind: str | None) -> tuple[str, dict[str, Any]]:
    """(collection path, item) for an id, trying reviews then access requests unless `kind` says."""
    paths = {"review": "/v1/reviews", "access-request": "/v1/access-requests"}
    if kind is not None and kind not in paths:
        _fail("--kind is review or access-request")
    candidates = [paths[kind]] if kind else list(paths.values())
    for path in candidates:
        response = client.get(f"{path}/{item_id}")
        if response.status_code == 200:
            return path, response.json()
        if response.status_code != 404:
            _call(client, "GET", f"{path}/{item_id}")
    _fail(f"no review or access request {item_id} that you may see")


def _summary(item: dict[str, Any]) -> str:
    if "sql" in item:
        return item["sql"].replace("\n", " ")[:80]
    return f"policy {item['policy']} for {item['duration_seconds'] // 60} min"


def list_items(
    state: Annotated[
        str | None, typer.Option("--state", help="pending (default: what you may decide), approved, …")
    ] = "pending",
    all_states: Annotated[bool, typer.Option("--all", help="Every state.")] = False,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List reviews and access requests (by default the pending ones you may decide)."""
    params = {} if all_states or not state else {"state": state}
    with _client(api_url, token) as client:
        reviews = _call(client, "GET", "/v1/reviews", params=params)["items"]
        requests = _call(client, "GET", "/v1/access-requests", params=params)["items"]
    if as_json:
        out.print(json.dumps({"reviews": reviews, "access_requests": requests}, indent=2))
        return
    table = Table("id", "kind", "state", "requester", "connection", "approvals", "what")
    for kind, items in (("review", reviews), ("access-request", requests)):
        for item in items:
            table.add_row(
                item["id"],
                kind,
                item["state"],
                item["requester"]["username"],
                item["connection"],
                f"{item['approvals']}/{item['approvals_required']}",
                _summary(item),
            )
    out.print(table)


def show(
    item_id: Annotated[str, typer.Argument(help="A review or access request id.")],
    kind: Kind | None = None,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
) -> None:
    """Show one review or access request with its votes (JSON)."""
    with _client(api_url, token) as client:
        _, item = _find(client, item_id, kind)
    out.print(json.dumps(item, indent=2))


def _decide(
    vote: str,
    item_id: str,
    kind: str | None,
    comment: str | None,
    break_glass: bool,
    api_url: str,
    token: str | None,
) -> None:
    with _client(api_url, token) as client:
        path, _ = _find(client, item_id, kind)
        item = _call(
            client, "POST", f"{path}/{item_id}/{vote}", json={"comment": comment, "break_glass": break_glass}
        )
    out.print(f"{item_id}: {item['state']} ({item['approvals']}/{item['approvals_required']} approvals)")


def approve(
    item_id: Annotated[str, typer.Argument(help="A review or access request id.")],
    comment: Comment = None,
    break_glass: Annotated[
        bool,
        typer.Option("--break-glass", help="Approve your own item in an emergency (needs --comment; loud)."),
    ] = False,
    kind: Kind | None = None,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
) -> None:
    """Approve a review or access request."""
    _decide("approve", item_id, kind, comment, break_glass, api_url, token)


def deny(
    item_id: Annotated[str, typer.Argument(help="A review or access request id.")],
    comment: Comment = None,
    kind: Kind | None = None,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
) -> None:
    """Deny a review or access request (the comment reaches the requester)."""
    _decide("deny", item_id, kind, comment, False, api_url, token)


def request_access(
    connection: Annotated[str, typer.Option("--connection", help="The pgward connection.")],
    policy: Annotated[str, typer.Option("--policy", help="The policy to be granted.")],
    duration: Annotated[str, typer.Option("--for", help="How long, once approved: 30m, 8h, 1d.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (most policies require it).")] = None,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
) -> None:
    """Ask for a policy for a limited time; prints the request's id and URL."""
    with _client(api_url, token) as client:
        item = _call(
            client,
            "POST",
            "/v1/access-requests",
            json={"connection": connection, "policy": policy, "duration": duration, "reason": reason},
        )
    err.print(f"access request {item['id']} is {item['state']}: {item['url']}", highlight=False)
    out.print(item["id"])


def register(app: typer.Typer) -> None:
    approvals_app.command("list")(list_items)
    approvals_app.command("show")(show)
    approvals_app.command("approve")(approve)
    approvals_app.command("deny")(deny)
    app.add_typer(approvals_app, name="approvals")
    app.command("request-access")(request_access)
