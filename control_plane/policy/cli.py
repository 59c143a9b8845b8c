"""The policy commands of `pgward`: plan, apply, policy test, policy schema."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

policy_app = typer.Typer(no_args_is_help=True, help="Policy documents: test them, print their JSON Schema.")

Files = Annotated[
    list[Path], typer.Option("-f", "--file", help="A file or directory (YAML/JSON); repeatable.")
]
ApiUrl = Annotated[str, typer.Option("--api-url", envvar="PGWARD_API_URL", help="The pgward API.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="PGWARD_TOKEN", help="An admin credential (API key or OIDC token)."),
]
Prune = Annotated[bool, typer.Option("--prune", help="Delete server policies that are not in the files.")]


class Against(StrEnum):
    files = "files"
    server = "server"


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(EXIT_ERROR)


def _bundle(paths: list[Path]) -> Any:
    from control_plane.policy.files import FileError, load

    try:
        return load(paths)
    except FileError as exc:
        _fail(str(exc))


def _token(token: str | None) -> str:
    if not token:
        _fail("no credential: pass --token or set PGWARD_TOKEN (an API key or token of an admin identity)")
    return token


def plan(
    files: Files, api_url: ApiUrl = "http://127.0.0.1:8080", token: Token = None, prune: Prune = False
) -> None:
    """Show what `apply` would change on the server. Exit 0: nothing; 2: changes pending; 1: error."""
    from control_plane.policy.plan import Api, PlanError, make_plan

    bundle = _bundle(files)
    try:
        with Api(api_url, _token(token)) as api:
            result = make_plan(api, bundle, prune=prune)
    except PlanError as exc:
        _fail(str(exc))
    for change in result.changes:
        out.print(change.line())
    if result.blocked:
        err.print(f"{len(result.blocked)} change(s) cannot be applied", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    pending = len(result.pending)
    err.print(f"{pending} change(s) pending" if pending else "no changes", highlight=False)
    raise typer.Exit(EXIT_CHANGES if pending else EXIT_OK)


def apply(
    files: Files, api_url: ApiUrl = "http://127.0.0.1:8080", token: Token = None, prune: Prune = False
) -> None:
    """Make the server match the files (a second apply changes nothing). Exit 0: done; 1: error."""
    from control_plane.policy.plan import Api, PlanError, apply_plan, make_plan

    bundle = _bundle(files)
    try:
        with Api(api_url, _token(token)) as api:
            result = make_plan(api, bundle, prune=prune)
            notes = apply_plan(api, result)
    except PlanError as exc:
        _fail(str(exc))
    for note in notes:
        out.print(note)
    err.print(f"applied {len(result.pending)} change(s)" if result.pending else "no changes", highlight=False)


def policy_test(
    files: Files,
    against: Annotated[
        Against, typer.Option("--against", help="Decide with the files' policies or the server's.")
    ] = Against.files,
    policies: Annotated[
        list[Path] | None, typer.Option("--policies", help="Policy files (default: the -f paths).")
    ] = None,
    api_url: ApiUrl = "http://127.0.0.1:8080",
    token: Token = None,
) -> None:
    """Run PolicyTest cases; print each decision and why. Exit 1 on any mismatch."""
    from control_plane.policy import testing
    from control_plane.policy.engine import PolicyEngine, PolicySet
    from control_plane.policy.explain import ExplainRequest

    bundle = _bundle(files)
    if not bundle.tests:
        _fail("no test cases found (documents of kind PolicyTest with a `tests` list)")
    if against is Against.files:
        source = _bundle(policies) if policies else bundle
        engine = PolicyEngine(PolicySet.build(source.policies.values(), "files"))
        explainer = testing.engine_explainer(engine)
        outcomes = testing.run(bundle.tests, explainer)
    else:
        from control_plane.policy.plan import Api, PlanError

        try:
            with Api(api_url, _token(token)) as api:

                def remote(request: ExplainRequest) -> dict[str, Any]:
                    result: dict[str, Any] = api.request(
                        "POST", "/v1/decisions/explain", json=request.model_dump(mode="json")
                    ).json()
                    return result

                outcomes = testing.run(bundle.tests, remote)
        except PlanError as exc:
            _fail(str(exc))
    failed = 0
    for o in outcomes:
        status = "[green]PASS[/]" if o.ok else "[bold red]FAIL[/]"
        out.print(f"{status} {o.name}: {o.got} — {o.why}")
        for problem in o.problems:
            out.print(f"     {problem}  ({o.where})")
        failed += not o.ok
    err.print(f"{len(outcomes) - failed} passed, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(EXIT_ERROR)


def policy_schema(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of policy documents (published as docs/policy.schema.json)."""
    from control_plane.policy.documents import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        out.file.write(text)
    else:
        output.write_text(text)


def register(app: typer.Typer) -> None:
    """Add the policy commands to the `pgward` app."""
    app.command("plan")(plan)
    app.command("apply")(apply)
    policy_app.command("test")(policy_test)
    policy_app.command("schema")(policy_schema)
    app.add_typer(policy_app, name="policy")
