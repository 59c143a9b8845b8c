"""`pgward demo`: a throwaway target with the shop data, the metadata store and the gateway, in one dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.config import OidcIssuer, ServiceSubject, Settings
from control_plane.demo.certs import TlsFiles, ensure_certs
from control_plane.demo.shop import ShopInfo, load_shop
from control_plane.identity.dev_issuer import DevIdentity, DevIssuer
from control_plane.pgserver import LocalPostgres

__all__ = ["DemoEnvironment", "DemoIdentity", "bootstrap", "main", "prepare", "write_demo_json"]

CONNECTION = "shop"
STORE_DATABASE = "pgward"
STORE_ROLE = "pgward"
DEMO_FILE = "demo.json"
# Secrets the demo needs again on the next run (role passwords, API keys); never printed or logged.
SECRETS_FILE = "demo-secrets.json"
# The demo's policies (alice, bob, carol, ci, agent), applied at every start.
DEMO_POLICIES = Path(__file__).resolve().parent / "policies"


@dataclass(frozen=True)
class DemoIdentity:
    """A service identity of the demo and what its callers need to know."""

    name: str
    groups: tuple[str, ...]
    in_demo_json: bool = True


# The `identities` table of the demo contract grows as the issues that bring people and policies land.
SERVICE_IDENTITIES: tuple[DemoIdentity, ...] = (
    DemoIdentity("ci", ("ci",)),
    DemoIdentity("demo-admin", ("admins",), in_demo_json=False),
)


# People and the agent log in with OIDC tokens from the development issuer (`ci` keeps its API key:
# the path of a job without OIDC). The agent's token has `sub` "demo-agent", which the issuer
# configuration maps to the service identity `agent`, as a workload token would be in production.
DEMO_AUDIENCE = "pgward-demo"
OIDC_IDENTITIES: dict[str, DevIdentity] = {
    "alice": DevIdentity("alice", "alice", ("analysts",)),
    "bob": DevIdentity("bob", "bob", ("dba", "admins")),
    "carol": DevIdentity("carol", "carol", ("approvers", "auditors")),
    "agent": DevIdentity("demo-agent", "agent", ("agents",)),
}
_AGENT_SUBJECT = ServiceSubject(subject="demo-agent", identity="agent", groups=("agents",))


def dev_issuer_config(issuer: DevIssuer, ca_file: Path) -> OidcIssuer:
    """How the demo gateway trusts its development issuer (over HTTPS with the demo CA)."""
    return OidcIssuer(
        issuer=issuer.issuer, audience=DEMO_AUDIENCE, ca_file=ca_file, service_subjects=(_AGENT_SUBJECT,)
    )


@dataclass
class DemoEnvironment:
    """Everything `prepare` set up: both clusters (running), the shop credential, TLS files, settings."""

    state_dir: Path
    target: LocalPostgres
    store: LocalPostgres
    shop: ShopInfo
    tls: TlsFiles
    settings: Settings
    secrets: dict[str, Any]
    versions: dict[str, str]

    def stop(self) -> None:
        """Stop both clusters, the store last (the gateway may still write to it while stopping)."""
        errors: list[BaseException] = []
        for cluster in (self.target, self.store):
            try:
                cluster.stop()
            except Exception as exc:  # stop the other one all the same
                errors.append(exc)
        if errors:
            raise errors[0]


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    # 0600 from the first byte and an atomic rename: readers never see a partial or world-readable file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _listen_address(listen: str) -> tuple[str, int]:
    """(host clients should use, port) of a `host:port` listen setting."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    # A wildcard listener is reachable on loopback, and the demo certificate names loopback only.
    if host in ("0.0.0.0", "::", "*"):  # noqa: S104 (mapping a wildcard, not binding one)
        host = "127.0.0.1"
    return host, int(port)


def prepare(state_dir: Path) -> DemoEnvironment:
    """Start the target and the store, load the shop data, make certificates, migrate the store.

    Idempotent: a second call with the same `state_dir` reuses the clusters, data and secrets. On an
    error the clusters started here are stopped again.
    """
    state_dir = state_dir.expanduser().absolute()
    if not state_dir.exists():
        # Private: it holds keys and passwords (as root, LocalPostgres adds o+x for the server's user).
        state_dir.mkdir(parents=True, mode=0o700)
    saved = _read_json(state_dir / SECRETS_FILE)

    # The target is throwaway (fsync off); the store keeps what the operator configured.
    # Room for the 1,000 concurrent sessions the gateway is benchmarked with (bench/idle_sessions.py).
    target = LocalPostgres(state_dir / "target", durable=False, settings={"max_connections": "1100"})
    store = LocalPostgres(state_dir / "store")
    try:
        target.start()
        store.start()
        shop = load_shop(target.dsn(), password=saved.get("shop_owner_password"))
        store_password = saved.get("store_password") or secrets.token_urlsafe(24)
        _ensure_store_database(store, store_password)
        tls = ensure_certs(state_dir / "tls")
        saved.update(shop_owner_password=shop.password, store_password=store_password)
        _write_private_json(state_dir / SECRETS_FILE, saved)

        settings = Settings(
            state_dir=state_dir,
            database_url=store.sqlalchemy_url(STORE_DATABASE, STORE_ROLE, store_password),
            dev_mode=True,
            tls_cert=tls.server_cert,
            tls_key=tls.server_key,
        )
        # Creates state_dir/secret.key (0600) in dev mode unless PGWARD_SECRET_KEY is set.
        settings.secret_key_bytes()
        from control_plane.store.migrate import upgrade

        upgrade(settings.require_database_url())
    except BaseException:
        with contextlib.suppress(Exception):
            target.stop()
        with contextlib.suppress(Exception):
            store.stop()
        raise
    versions = {"target": target.version(), "store": store.version()}
    return DemoEnvironment(state_dir, target, store, shop, tls, settings, saved, versions)


def _ensure_store_database(store: LocalPostgres, password: str) -> None:
    from psycopg import sql

    with store.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [STORE_ROLE]).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(STORE_ROLE), sql.Literal(password)
            )
        )
    store.create_database(STORE_DATABASE, owner=STORE_ROLE)


async def bootstrap(
    settings: Settings,
    *,
    target_port: int,
    shop: ShopInfo,
    known_tokens: dict[str, str],
    identities: Sequence[DemoIdentity] = SERVICE_IDENTITIES,
    target_ca_pem: str | None = None,
) -> dict[str, str]:
    """Register the `shop` connection and the demo's service identities; returns {name: API key}.

    A token in `known_tokens` that still verifies is kept; otherwise the identity is created, or its
    keys are rotated (the old token is unknown, so a new one is the only way to hand one out).
    """
    from pydantic import SecretStr

    from control_plane.connections.schemas import ConnectionSpec
    from control_plane.connections.service import ConnectionService
    from control_plane.identity.api_keys import ApiKeyVerifier
    from control_plane.identity.credentials import AuthError
    from control_plane.identity.service_identities import ServiceIdentityService
    from control_plane.store.crypto import SecretBox
    from control_plane.store.db import create_engine, create_sessionmaker

    box = SecretBox.from_settings(settings)
    engine = create_engine(settings.require_database_url())
    sessionmaker = create_sessionmaker(engine)
    tokens: dict[str, str] = {}
    try:
        spec = ConnectionSpec(
            host="127.0.0.1",
            port=target_port,
            database=shop.database,
            username=shop.role,
            password=SecretStr(shop.password),
            # The embedded PostgreSQL is built without TLS; loopback only, so plaintext stays on the host.
            tls_mode="verify-full" if target_ca_pem else "disable",
            sslrootcert=target_ca_pem,
            description="pgward demo: throwaway target with fake PII",
        )
        async with sessionmaker() as session:
            await ConnectionService(session, box).put(CONNECTION, spec, if_match=None)
            await session.commit()
        await _apply_demo_policies(sessionmaker)

        verifier = ApiKeyVerifier(sessionmaker, settings)
        for ident in identities:
            token = known_tokens.get(ident.name)
            if token:
                try:
                    await verifier.verify(ident.name, token)
                except AuthError:
                    token = None
            async with sessionmaker() as session:
                service = ServiceIdentityService(session, box.pepper)
                existing = await service.identities.get_by_name(ident.name, for_update=True)
                if existing is None:
                    _, generated = await service.create(ident.name, ident.groups, "pgward demo")
                    token = generated.token
                else:
                    if list(existing.groups) != list(ident.groups):
                        existing.groups = list(ident.groups)
                        await session.flush()
                    if not token:
                        _, generated = await service.rotate(ident.name)
                        token = generated.token
                await session.commit()
            tokens[ident.name] = token
    finally:
        await engine.dispose()
    return tokens


async def _apply_demo_policies(sessionmaker: Any) -> None:
    """Apply control_plane/demo/policies/*.yaml (idempotent: unchanged documents keep their version)."""
    from control_plane.policy.files import load
    from control_plane.policy.service import put_documents

    bundle = load([DEMO_POLICIES])
    await put_documents(sessionmaker, list(bundle.policies.values()), author="pgward demo")


def write_demo_json(
    env: DemoEnvironment, tokens: dict[str, str], oidc_tokens: Mapping[str, str] | None = None
) -> Path:
    """Write `demo.json` per the demo contract (0600: it holds API keys, OIDC tokens and passwords)."""
    identities: dict[str, dict[str, Any]] = {
        ident.name: {"user": ident.name, "token": tokens[ident.name], "groups": list(ident.groups)}
        for ident in SERVICE_IDENTITIES
        if ident.in_demo_json
    }
    for name, token in (oidc_tokens or {}).items():
        oidc = OIDC_IDENTITIES[name]
        identities[name] = {"user": oidc.username, "token": token, "groups": list(oidc.groups)}
    host, port = _listen_address(env.settings.proxy_listen)
    api_host, api_port = _listen_address(env.settings.api_listen)
    api_host = f"[{api_host}]" if ":" in api_host else api_host
    data = {
        "proxy": {"host": host, "port": port, "sslrootcert": str(env.tls.ca_cert)},
        "api_url": f"http://{api_host}:{api_port}",
        "connection": CONNECTION,
        "target_dsn": env.target.dsn(),
        "store_url": env.settings.require_database_url(),
        "identities": identities,
        "admin_token": tokens["demo-admin"],
    }
    path = env.state_dir / DEMO_FILE
    _write_private_json(path, data)
    return path


def ready_message(env: DemoEnvironment, tokens: dict[str, str], issuer_url: str | None = None) -> str:
    host, port = _listen_address(env.settings.proxy_listen)
    api_host, api_port = _listen_address(env.settings.api_listen)
    return (
        "\npgward demo is ready.\n"
        f"  gateway   {host}:{port} (TLS, CA {env.tls.ca_cert})\n"
        f"  API       http://{api_host}:{api_port}  (admin token in {env.state_dir / DEMO_FILE})\n"
        f"  target    PostgreSQL {env.versions['target']} on 127.0.0.1:{env.target.port}, database shop\n"
        f"  store     PostgreSQL {env.versions['store']} on 127.0.0.1:{env.store.port}, "
        f"database {STORE_DATABASE}\n"
        "\nConnect through the gateway as the service identity `ci`:\n\n"
        f'  PGPASSWORD={tokens["ci"]} psql "host={host} port={port} dbname={CONNECTION} user=ci '
        f'sslmode=verify-full sslrootcert={env.tls.ca_cert}"\n\n'
        + (
            f"alice, bob, carol and agent use OIDC tokens from the development issuer {issuer_url}\n"
            f"(DEVELOPMENT ONLY); their tokens are in {env.state_dir / DEMO_FILE}.\n\n"
            if issuer_url
            else ""
        )
        + "Press Ctrl-C to stop.\n"
    )


async def _serve_until_stopped(env: DemoEnvironment) -> None:
    from control_plane.proxy.server import serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tokens = await bootstrap(
        env.settings,
        target_port=env.target.port or 0,
        shop=env.shop,
        known_tokens=dict(env.secrets.get("tokens", {})),
        target_ca_pem=env.target.ca_cert.read_text() if env.target.ssl and env.target.ca_cert else None,
    )
    env.secrets["tokens"] = tokens
    _write_private_json(env.state_dir / SECRETS_FILE, env.secrets)

    issuer = DevIssuer(
        env.state_dir / "dev-issuer",
        OIDC_IDENTITIES,
        audience=DEMO_AUDIENCE,
        tls_cert=env.tls.server_cert,
        tls_key=env.tls.server_key,
    )
    await issuer.start()
    trusted = dev_issuer_config(issuer, env.tls.ca_cert)
    env.settings = env.settings.model_copy(update={"oidc_issuers": [trusted]})
    # Re-minted at every start: the issuer's port (and so `iss`) changes from run to run.
    oidc_tokens = {name: issuer.mint(name) for name in OIDC_IDENTITIES}

    ready = asyncio.Event()
    server = asyncio.create_task(serve(env.settings, ready=ready), name="pgward-serve")
    ready_wait = asyncio.create_task(ready.wait())
    stop_wait = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({server, ready_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # raises what made serve() fail
            raise RuntimeError("the gateway stopped before it became ready")
        if ready.is_set() and not stop.is_set():
            write_demo_json(env, tokens, oidc_tokens)
            print(ready_message(env, tokens, issuer.issuer), flush=True)
            await asyncio.wait({server, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if server.done():
                server.result()
    finally:
        (env.state_dir / DEMO_FILE).unlink(missing_ok=True)
        for task in (server, ready_wait, stop_wait):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await issuer.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(state_dir: Path) -> None:
    """Run the demo in `state_dir` until SIGINT/SIGTERM, then stop the gateway and both clusters."""
    state_dir = Path(state_dir).expanduser().absolute()
    # A demo.json from an earlier run would tell waiting clients we are ready before we are.
    (state_dir / DEMO_FILE).unlink(missing_ok=True)
    print(f"pgward demo: starting in {state_dir} …", file=sys.stderr, flush=True)
    # Until the event loop takes over, SIGTERM unwinds like Ctrl-C so prepare() stops what it started.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        env = prepare(state_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        asyncio.run(_serve_until_stopped(env))
    finally:
        env.stop()
        print("pgward demo: stopped.", file=sys.stderr, flush=True)
