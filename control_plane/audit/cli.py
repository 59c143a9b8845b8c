"""`pgward audit verify | search | export | checkpoint | public-key | prune`."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

audit_app = typer.Typer(no_args_is_help=True, help="The audit log: verify, search, export.")

Since = Annotated[
    datetime | None, typer.Option("--since", help="Only records at or after this time (ISO 8601).")
]
Until = Annotated[datetime | None, typer.Option("--until", help="Only records before this time (ISO 8601).")]


def _cli() -> Any:
    # The main CLI module imports this one: import lazily to avoid a cycle.
    from control_plane import cli

    return cli


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


async def _audit_cli_access(settings: Any, sessionmaker: Any, action: str, detail: dict[str, Any]) -> None:
    from control_plane.audit.writer import record_access

    # A command run against the store has no pgward identity: the operating-system user stands in.
    await record_access(
        action,
        actor=None,
        resource="audit",
        detail={**detail, "os_user": getpass.getuser(), "via": "cli"},
        settings=settings,
        engine=sessionmaker.kw["bind"],
    )


def _print_report(report: Any) -> None:
    cli = _cli()
    for note in report.notes:
        cli.err.print(f"[yellow]note:[/] {note}", highlight=False)
    for problem in report.problems:
        cli.err.print(f"[bold red]TAMPERED:[/] {problem}", highlight=False)
    summary = f"{report.records} records in {report.streams} streams, {report.checkpoints} checkpoints: " + (
        "[bold green]verified[/]" if report.ok else f"[bold red]{len(report.problems)} problem(s)[/]"
    )
    cli.err.print(summary)
    if not report.ok:
        raise typer.Exit(cli.EXIT_FAILED)


@audit_app.command("verify")
def verify(
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Verify this export (JSON Lines) instead of the store."),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option("--public-key", "-k", help="PEM public key to check checkpoints with."),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Check the hash chain and the signed checkpoints; report the first tampered record."""
    from control_plane.audit.export import verify_file, verify_store

    cli = _cli()
    if file is not None:
        with file.open(encoding="utf-8") as lines:
            report = verify_file(lines, public_key or [])
        _print_report(report)
        return
    settings = cli._settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> Any:
        async with sessionmaker() as session:
            return await verify_store(session)

    _print_report(cli._run_store(settings, work))


@audit_app.command("search")
def search_cmd(
    identity: Annotated[str | None, typer.Option(help="Subject or user name.")] = None,
    connection: Annotated[str | None, typer.Option(help="Connection name.")] = None,
    since: Since = None,
    until: Until = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny.")] = None,
    statement_class: Annotated[str | None, typer.Option("--class", help="Statement class.")] = None,
    q: Annotated[str | None, typer.Option("--q", "-q", help="Text in the statement.")] = None,
    kind: Annotated[str | None, typer.Option(help="Record kind (statement, session_start, …).")] = None,
    session: Annotated[str | None, typer.Option(help="Session UUID.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines instead of a table.")] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Search the audit log with the filters of GET /v1/audit/events."""
    from control_plane.audit import search as store

    cli = _cli()
    settings = cli._settings(state_dir, database_url)
    filters = store.Filters(
        identity, connection, _aware(since), _aware(until), decision, statement_class, q, kind, session
    )

    async def work(sessionmaker: Any) -> list[dict[str, Any]]:
        async with sessionmaker() as s:
            rows, _ = await store.search(s, filters, limit=limit, cursor=None)
        await _audit_cli_access(settings, sessionmaker, "audit.search", {"filters": filters.describe()})
        return [store.event_out(r) for r in rows]

    events = cli._run_store(settings, work)
    if as_json:
        for event in events:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        return
    table = Table("time", "kind", "who", "connection", "decision", "class", "statement", "rows", "sqlstate")
    for e in events:
        who = (e.get("identity") or {}).get("username") or e.get("user") or ""
        table.add_row(
            e.get("time", ""),
            e.get("kind", ""),
            who,
            e.get("connection") or "",
            e.get("decision") or "",
            e.get("class") or "",
            (e.get("statement") or "")[:80],
            "" if e.get("rows") is None else str(e["rows"]),
            e.get("sqlstate") or "",
        )
    cli.out.print(table)


@audit_app.command("export")
def export_cmd(
    since: Since = None,
    until: Until = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Export records, checkpoints and prunes as JSON Lines (verify offline with `audit verify -f`)."""
    from control_plane.audit.export import export_lines

    cli = _cli()
    settings = cli._settings(state_dir, database_url)
    detail = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}

    async def work(sessionmaker: Any) -> int:
        # The export is on record before any of it is written out.
        await _audit_cli_access(settings, sessionmaker, "audit.export", detail)
        count = 0
        target = output.open("w", encoding="utf-8") if output is not None else sys.stdout
        try:
            async with sessionmaker() as s:
                async for line in export_lines(s, since=_aware(since), until=_aware(until)):
                    target.write(line)
                    count += 1
        finally:
            if output is not None:
                target.close()
        return count

    lines = cli._run_store(settings, work)
    cli.err.print(f"exported {lines} lines")


@audit_app.command("checkpoint")
def checkpoint_cmd(
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Sign the current head of every stream now."""
    from control_plane.audit.writer import checkpoint_streams

    cli = _cli()
    settings = cli._settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> int:
        return len(await checkpoint_streams(sessionmaker, settings))

    cli.err.print(f"signed {cli._run_store(settings, work)} checkpoint(s)")


@audit_app.command("public-key")
def public_key_cmd(
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Print the checkpoint signing public key (PEM), created if the deployment has none yet."""
    from control_plane.audit.keys import public_pem, signing_key
    from control_plane.store.crypto import SecretBox

    cli = _cli()
    settings = cli._settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> str:
        async with sessionmaker() as s:
            key = await signing_key(s, SecretBox.from_settings(settings))
            return public_pem(key.public)

    sys.stdout.write(cli._run_store(settings, work))


@audit_app.command("prune")
def prune_cmd(
    before: Annotated[
        datetime | None, typer.Option("--before", help="Delete records older than this.")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Delete old records (retention); the chain restarts from a signed prune record."""
    from control_plane.audit.retention import prune

    cli = _cli()
    settings = cli._settings(state_dir, database_url)
    cutoff = _aware(before)
    if cutoff is None:
        if settings.audit_retention_days is None:
            cli._fail("give --before or set PGWARD_AUDIT_RETENTION_DAYS", cli.EXIT_CONFIG)
        cutoff = datetime.now(UTC) - timedelta(days=settings.audit_retention_days)

    async def work(sessionmaker: Any) -> int:
        async with sessionmaker() as s:
            done = await prune(s, settings, cutoff)
            await s.commit()
        deleted = sum(p.deleted for p in done)
        await _audit_cli_access(
            settings, sessionmaker, "audit.prune", {"before": cutoff.isoformat(), "deleted": deleted}
        )
        return deleted

    cli.err.print(f"pruned {cli._run_store(settings, work)} record(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
