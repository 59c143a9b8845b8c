"""The `pgward` command line."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from control_plane.config import ConfigError, Settings

T = TypeVar("T")

app = typer.Typer(name="pgward", no_args_is_help=True, help="pgward: an access gateway for PostgreSQL.")
identities_app = typer.Typer(no_args_is_help=True, help="Service identities and their API keys.")
connections_app = typer.Typer(no_args_is_help=True, help="Registered target databases.")
app.add_typer(identities_app, name="identities")
app.add_typer(connections_app, name="connections")

# Messages go to stderr so stdout carries only results (an API key) that scripts can capture.
err = Console(stderr=True)
out = Console()

EXIT_FAILED = 1  # the operation was refused (exists, not found, …)
EXIT_CONFIG = 2  # bad configuration or arguments
EXIT_STORE = 3  # the metadata store cannot be reached

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Directory for keys and local state (PGWARD_STATE_DIR).")
]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="Metadata store URL (PGWARD_DATABASE_URL).")
]


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _settings(state_dir: Path | None = None, database_url: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        _fail(_validation_message(exc), EXIT_CONFIG)


def _validation_message(exc: ValidationError) -> str:
    # Never include the rejected input: it may be a password.
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())


def _run_store(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(sessionmaker)` against the store, turning the usual failures into clear exits."""
    from sqlalchemy.exc import OperationalError

    from control_plane.store.db import create_engine, create_sessionmaker
    from control_plane.store.errors import StoreError

    async def main() -> T:
        engine = create_engine(settings.require_database_url())
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except StoreError as exc:
        _fail(exc.message, EXIT_FAILED)
    except OperationalError as exc:
        _fail(f"cannot reach the metadata store: {exc.orig or exc}", EXIT_STORE)


@app.command()
def migrate(database_url: DatabaseUrl = None, state_dir: StateDir = None) -> None:
    """Create or upgrade the metadata store schema (alembic upgrade head)."""
    from sqlalchemy.exc import OperationalError

    from control_plane.store import migrate as store_migrate

    settings = _settings(state_dir, database_url)
    try:
        url = settings.require_database_url()
        store_migrate.upgrade(url)
        revision = store_migrate.current(url)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except OperationalError as exc:
        _fail(f"cannot reach the metadata store: {exc.orig or exc}", EXIT_STORE)
    err.print(f"metadata store is at revision [bold]{revision}[/]")


@app.command()
def serve(
    api_only: Annotated[bool, typer.Option("--api-only", help="Run only the REST API.")] = False,
    proxy_only: Annotated[bool, typer.Option("--proxy-only", help="Run only the PostgreSQL proxy.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Run the API and the proxy in one process."""
    if api_only and proxy_only:
        _fail("--api-only and --proxy-only exclude each other", EXIT_CONFIG)
    settings = _settings(state_dir)
    # Imported here: it loads the Rust extension, which `migrate` and friends do not need.
    from control_plane.proxy.server import serve_forever

    try:
        serve_forever(settings, api=not proxy_only, proxy=not api_only)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)


@app.command()
def demo(state_dir: StateDir = None) -> None:
    """Start a throwaway target, the metadata store and pgward with sample identities."""
    from control_plane.demo.run import main

    main(state_dir if state_dir is not None else _settings().state_dir)


CaFile = Annotated[
    str | None,
    typer.Option("--ca-file", envvar="PGWARD_LOGIN_CA_FILE", help="PEM CA bundle for the issuer's TLS."),
]


@app.command()
def login(
    issuer: Annotated[str, typer.Option("--issuer", envvar="PGWARD_LOGIN_ISSUER", help="OIDC issuer URL.")],
    client_id: Annotated[
        str,
        typer.Option("--client-id", envvar="PGWARD_LOGIN_CLIENT_ID", help="OAuth client of pgward's CLI."),
    ] = "pgward-cli",
    scope: Annotated[str, typer.Option(help="Scopes to request.")] = "openid offline_access profile groups",
    ca_file: CaFile = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the URL instead of opening it.")
    ] = False,
) -> None:
    """Log in to an OIDC issuer (device flow, else authorization code + PKCE) and cache the tokens."""
    from control_plane.identity import login as flows

    def prompt(p: flows.DevicePrompt) -> None:
        err.print(f"To log in, open {p.verification_uri} and enter the code {p.user_code}", highlight=False)
        if p.verification_uri_complete:
            err.print(f"or open {p.verification_uri_complete}", highlight=False)

    def open_url(url: str) -> None:
        err.print(f"To log in, open this URL in a browser:\n{url}", highlight=False, soft_wrap=True)
        if not no_browser:
            import webbrowser

            webbrowser.open(url)

    try:
        discovery = flows.discover(issuer, ca_file)
        if discovery.get("device_authorization_endpoint"):
            answer = flows.device_flow(discovery, client_id, scope, ca_file=ca_file, prompt=prompt)
        elif discovery.get("authorization_endpoint"):
            answer = flows.pkce_flow(discovery, client_id, scope, ca_file=ca_file, open_url=open_url)
        else:
            _fail(f"{issuer} offers neither the device flow nor an authorization endpoint", EXIT_FAILED)
        entry = flows.TokenCache().store(issuer, client_id, ca_file, answer)
    except flows.LoginError as exc:
        _fail(str(exc), EXIT_FAILED)
    claims = flows.unverified_claims(entry["token"])
    who = claims.get("preferred_username") or claims.get("sub") or "?"
    where = flows.tokens_path()
    err.print(f"logged in to {issuer} as [bold]{who}[/]; tokens cached in {where}", highlight=False)


@app.command()
def token(
    issuer: Annotated[
        str | None, typer.Option("--issuer", help="Issuer to use (default: the last one logged in to).")
    ] = None,
) -> None:
    """Print a valid token for PGPASSWORD, refreshing it when it has expired."""
    from control_plane.identity.login import LoginError, TokenCache

    try:
        value = TokenCache().token(issuer)
    except LoginError as exc:
        _fail(str(exc), EXIT_FAILED)
    sys.stdout.write(value + "\n")


@app.command()
def connect(
    connection: Annotated[str, typer.Argument(help="The pgward connection (the database name).")],
    host: Annotated[str, typer.Option(envvar="PGWARD_CONNECT_HOST", help="Gateway host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PGWARD_CONNECT_PORT", help="Gateway port.")] = 6543,
    sslrootcert: Annotated[
        str | None,
        typer.Option(envvar="PGWARD_CONNECT_SSLROOTCERT", help="CA of the gateway's certificate."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="User name (default: the token's username).")] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", help="Issuer whose token to use.")] = None,
    psql: Annotated[str, typer.Option(envvar="PGWARD_PSQL", help="The psql program.")] = "psql",
) -> None:
    """Start psql through the gateway with the cached token as the password (sslmode=verify-full)."""
    import shutil

    from control_plane.identity.login import LoginError, TokenCache, unverified_claims

    try:
        value = TokenCache().token(issuer)
    except LoginError as exc:
        _fail(str(exc), EXIT_FAILED)
    claims = unverified_claims(value)
    name = user or claims.get("preferred_username") or claims.get("sub")
    if not name:
        _fail("the token names no user; pass --user", EXIT_CONFIG)
    program = shutil.which(psql)
    if program is None:
        _fail(f"{psql} is not on PATH", EXIT_CONFIG)
    conninfo = f"host={host} port={port} dbname={connection} user={name} sslmode=verify-full"
    # verify-full with libpq's default root file when no CA is given is what a public gateway needs.
    conninfo += f" sslrootcert={sslrootcert}" if sslrootcert else " sslrootcert=system"
    # The token goes through the environment of the new process only, never its command line.
    env = {**os.environ, "PGPASSWORD": value}
    os.execve(program, [program, conninfo], env)  # noqa: S606  # psql replaces this process, as intended


@identities_app.command("create")
def identities_create(
    name: str,
    group: Annotated[list[str], typer.Option("--group", "-g", help="A group; repeat for more.")],
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a service identity directly in the store and print its API key (shown once)."""
    from control_plane.identity.schemas import ServiceIdentityCreate
    from control_plane.identity.service_identities import ServiceIdentityService
    from control_plane.store.crypto import SecretBox

    try:
        data = ServiceIdentityCreate(name=name, groups=group, description=description)
    except ValidationError as exc:
        _fail(_validation_message(exc), EXIT_CONFIG)
    settings = _settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> str:
        pepper = SecretBox.from_settings(settings).pepper
        async with sessionmaker() as session:
            service = ServiceIdentityService(session, pepper)
            _, key = await service.create(data.name, data.groups, data.description)
            await session.commit()
        return key.token

    token = _run_store(settings, work)
    err.print(f"created service identity [bold]{data.name}[/] (groups: {', '.join(data.groups) or 'none'})")
    err.print("its API key follows; it is shown only now, store it safely:")
    out.print(token, highlight=False, soft_wrap=True)


@identities_app.command("list")
def identities_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    """List service identities."""
    from control_plane.store.repositories import ServiceIdentityRepository

    settings = _settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> list[tuple[str, str, str, str]]:
        async with sessionmaker() as session:
            rows = await ServiceIdentityRepository(session).list_after(None, 10_000)
            return [
                (
                    i.name,
                    ", ".join(i.groups),
                    str(sum(1 for k in i.api_keys if k.revoked_at is None)),
                    "yes" if i.disabled else "",
                )
                for i in rows
            ]

    table = Table("name", "groups", "live keys", "disabled")
    for row in _run_store(settings, work):
        table.add_row(*row)
    out.print(table)


@connections_app.command("add")
def connections_add(
    name: str,
    host: Annotated[str, typer.Option(help="Target host.")],
    database: Annotated[str, typer.Option(help="Database name on the target.")],
    user: Annotated[str, typer.Option(help="Role pgward logs in as.")],
    port: Annotated[int, typer.Option(help="Target port.")] = 5432,
    tls_mode: Annotated[str, typer.Option(help="disable, require or verify-full.")] = "verify-full",
    sslrootcert: Annotated[
        Path | None, typer.Option(help="PEM file of the CA that signs the target's certificate.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the target password from stdin.")
    ] = False,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a target database directly in the store."""
    from control_plane.connections.schemas import ConnectionCreate
    from control_plane.connections.service import ConnectionService
    from control_plane.store.crypto import SecretBox

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if password_stdin and not password:
        _fail("--password-stdin given but stdin held no password", EXIT_CONFIG)
    try:
        pem = sslrootcert.read_text() if sslrootcert is not None else None
    except OSError as exc:
        _fail(f"cannot read {sslrootcert}: {exc.strerror}", EXIT_CONFIG)
    try:
        data = ConnectionCreate.model_validate(
            {
                "name": name,
                "host": host,
                "port": port,
                "database": database,
                "username": user,
                "tls_mode": tls_mode,
                "sslrootcert": pem,
                "password": password,
                "description": description,
            }
        )
    except ValidationError as exc:
        _fail(_validation_message(exc), EXIT_CONFIG)
    settings = _settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> None:
        box = SecretBox.from_settings(settings)
        async with sessionmaker() as session:
            await ConnectionService(session, box).create(data)
            await session.commit()

    _run_store(settings, work)
    auth = "password" if password else "no password (trust)"
    err.print(f"registered connection [bold]{name}[/] → {host}:{port}/{database} as {user}, {auth}")


@connections_app.command("list")
def connections_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    """List registered connections."""
    from control_plane.store.repositories import ConnectionRepository

    settings = _settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> list[tuple[str, ...]]:
        async with sessionmaker() as session:
            rows = await ConnectionRepository(session).list_after(None, 10_000)
            return [
                (
                    c.name,
                    f"{c.host}:{c.port}",
                    c.database,
                    c.username,
                    c.tls_mode,
                    "yes" if c.secret_ciphertext else "",
                )
                for c in rows
            ]

    table = Table("name", "address", "database", "user", "tls", "password")
    for row in _run_store(settings, work):
        table.add_row(*row)
    out.print(table)


@connections_app.command("propose-tags")
def connections_propose_tags(
    name: str,
    sample: Annotated[int, typer.Option(help="Rows read per table (1-10000).")] = 100,
    min_rate: Annotated[
        float, typer.Option(help="Propose a tag when at least this share of a column's values match.")
    ] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Print counts and rates as JSON.")] = False,
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Sample the connection's text columns with the content detectors and print column_tags to
    paste into a policy (never applied). Reads data in clear with the stored credentials."""
    import json

    from control_plane.connections.propose import MAX_SAMPLE, ProposalUnavailable, TagProposal, propose_tags
    from control_plane.connections.service import get_connection_for_session

    if not 1 <= sample <= MAX_SAMPLE:
        _fail(f"--sample must be between 1 and {MAX_SAMPLE}", EXIT_CONFIG)
    if not 0 < min_rate <= 1:
        _fail("--min-rate must be above 0 and at most 1", EXIT_CONFIG)
    settings = _settings(state_dir, database_url)

    async def work(sessionmaker: Any) -> TagProposal | str:
        async with sessionmaker() as session:
            target = await get_connection_for_session(session, name, settings=settings)
        if target is None:
            return f'pgward has no connection named "{name}"'
        try:
            return await propose_tags(target, sample=sample, min_rate=min_rate)
        except ProposalUnavailable as exc:
            return f'cannot sample connection "{name}": {exc}'

    result = _run_store(settings, work)
    if isinstance(result, str):
        _fail(result, EXIT_FAILED)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.yaml(), end="")


# plan, apply, policy test, policy schema (control_plane/policy/cli.py).
from control_plane.policy.cli import register as _register_policy_commands  # noqa: E402

_register_policy_commands(app)

# audit verify, search, export, checkpoint, public-key, prune (control_plane/audit/cli.py).
from control_plane.audit.cli import register as _register_audit_commands  # noqa: E402

_register_audit_commands(app)

# approvals list|show|approve|deny, request-access (control_plane/approvals/cli.py).
from control_plane.approvals.cli import register as _register_approval_commands  # noqa: E402

_register_approval_commands(app)


@app.command()
def replay(
    session_id: Annotated[str, typer.Argument(help="The session's id (GET /v1/sessions).")],
    speed: Annotated[float, typer.Option(help="Play back this many times faster than recorded.")] = 1.0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print at once, without the original timing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON Lines, one event per line (never waits).")
    ] = False,
    max_rows: Annotated[int | None, typer.Option(help="Rows shown per result (all are counted).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read this recording file instead of asking the API.")
    ] = None,
    api_url: Annotated[str, typer.Option("--api-url", envvar="PGWARD_API_URL", help="The pgward API.")] = (
        "http://127.0.0.1:8080"
    ),
    token: Annotated[
        str | None, typer.Option("--token", envvar="PGWARD_TOKEN", help="An admin or auditor credential.")
    ] = None,
) -> None:
    """Show a recorded session as a psql-like transcript, with its original timing."""
    import tempfile

    import httpx

    from control_plane.recordings.reader import RecordingError
    from control_plane.recordings.replay import replay as run_replay

    if speed <= 0:
        _fail("--speed must be positive", EXIT_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        path = file
        if path is None:
            if not token:
                _fail("pass --token (or PGWARD_TOKEN), or read a file with --file", EXIT_CONFIG)
            path = Path(tmp) / "recording.pgwrec"
            headers = {"Authorization": f"Bearer {token}"}
            # Downloading through the API records the read in the audit log.
            with httpx.stream(
                "GET",
                f"{api_url.rstrip('/')}/v1/sessions/{session_id}/recording",
                headers=headers,
                timeout=60,
            ) as response:
                if response.status_code != 200:
                    response.read()
                    _fail(f"the API answered {response.status_code}: {response.text}", EXIT_FAILED)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        try:
            run_replay(
                path, speed=speed, wait=not no_wait and not as_json, as_json=as_json, max_rows=max_rows
            )
        except (RecordingError, OSError) as exc:
            _fail(str(exc), EXIT_FAILED)


if __name__ == "__main__":
    app()
