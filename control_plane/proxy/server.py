"""`pgward serve`: the API (uvicorn) and the Rust data plane in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from control_plane.api import metrics
from control_plane.api.app import create_app
from control_plane.api.metrics import registry_for
from control_plane.approvals.runtime import ApprovalsRuntime
from control_plane.audit.pump import AuditPump
from control_plane.audit.sink import SyslogSink
from control_plane.audit.writer import AuditWriter
from control_plane.config import ConfigError, Settings
from control_plane.dataplane import Dataplane
from control_plane.identity.api_keys import default_verifier
from control_plane.proxy.bridge import BridgeDispatcher
from control_plane.proxy.service import DecisionService
from control_plane.proxy.statements import is_node_name
from control_plane.store.db import create_engine, create_sessionmaker

log = structlog.get_logger("pgward.serve")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the caller owns the process's life."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_files(settings: Settings) -> tuple[str | None, str | None]:
    if settings.tls_cert and settings.tls_key:
        return str(settings.tls_cert), str(settings.tls_key)
    if settings.tls_cert or settings.tls_key:
        raise ConfigError("PGWARD_TLS_CERT and PGWARD_TLS_KEY must be set together")
    if settings.dev_mode:
        # Development only: a private CA in the state directory, so TLS is on even here.
        from control_plane.demo.certs import ensure_certs

        files = ensure_certs(settings.state_dir / "tls")
        log.warning("using a development TLS certificate", ca=str(files.ca_cert))
        return str(files.server_cert), str(files.server_key)
    if settings.allow_plaintext:
        host, _ = _split_listen(settings.proxy_listen)
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError("PGWARD_ALLOW_PLAINTEXT is honoured only on a loopback PGWARD_PROXY_LISTEN")
        return None, None
    raise ConfigError(
        "the proxy needs a TLS certificate: set PGWARD_TLS_CERT and PGWARD_TLS_KEY "
        "(or PGWARD_DEV_MODE=true for a generated development certificate)"
    )


def start_dataplane(settings: Settings) -> Dataplane:
    """Start the Rust data plane with the settings that shape it."""
    cert, key = _tls_files(settings)
    unknown = [name for name in settings.deny_statements if not is_node_name(name)]
    if unknown:
        raise ConfigError(f"PGWARD_DENY_STATEMENTS names unknown statement types: {', '.join(unknown)}")
    dataplane = Dataplane(
        settings.proxy_listen,
        cert,
        key,
        allow_plaintext=settings.allow_plaintext,
        max_message_size=settings.max_message_size,
        audit_queue_size=settings.audit_queue_size,
        audit_strict_timeout_s=settings.audit_strict_timeout,
        recording_dir=str(settings.recordings_path) if settings.recording == "on" else None,
        recording_level=settings.recording_level,
    )
    dataplane.start()
    return dataplane


async def serve(
    settings: Settings,
    api: bool = True,
    proxy: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until cancelled. `ready` is set once every requested part accepts connections."""
    engine = create_engine(settings.require_database_url())
    sessionmaker = create_sessionmaker(engine)
    verifier = default_verifier(sessionmaker, settings)
    dataplane: Dataplane | None = None
    dispatcher: BridgeDispatcher | None = None
    pump: AuditPump | None = None
    decisions: DecisionService | None = None
    api_server: _EmbeddedServer | None = None
    api_task: asyncio.Task[None] | None = None
    sink = SyslogSink(settings.audit_syslog) if settings.audit_syslog else None
    audit = AuditWriter(settings, engine, sink=sink)
    await audit.start()
    approvals = ApprovalsRuntime(settings, sessionmaker)
    try:
        approvals.start()
        if proxy:
            dataplane = start_dataplane(settings)
            decisions = DecisionService(settings, sessionmaker, verifier, audit)
            if audit.enabled:
                pump = AuditPump(dataplane, audit)
                pump.start()
                decisions.before_session_end.append(pump.drain)
            # A policy change must reach open sessions on their next statement: drop cached decisions.
            decisions.on_policies_changed.append(dataplane.invalidate)
            await decisions.start()
            dispatcher = BridgeDispatcher(dataplane, decisions)
            dispatcher.start()
            log.info("proxy listening", address=dataplane.local_addr())
        if api:
            checks = []
            if dataplane is not None:
                running = dataplane

                async def dataplane_ready() -> bool:
                    return running.local_addr() is not None

                checks.append(dataplane_ready)
            app = create_app(settings, sessionmaker, verifier=verifier, readiness_checks=checks)
            app.state.metrics_registry = registry_for(dataplane.stats if dataplane is not None else None)
            app.include_router(metrics.router)
            host, port = _split_listen(settings.api_listen)
            config = uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
            )
            api_server = _EmbeddedServer(config)
            api_task = asyncio.create_task(api_server.serve(), name="pgward-api")
            while not api_server.started:
                if api_task.done():
                    api_task.result()
                    raise RuntimeError(f"the API server could not start on {settings.api_listen}")
                await asyncio.sleep(0.02)
            log.info("API listening", address=settings.api_listen)
        if ready is not None:
            ready.set()
        if api_task is not None:
            # Shielded: cancelling serve() must stop uvicorn through should_exit (below), not by
            # cancelling it mid-lifespan.
            await asyncio.shield(api_task)
        else:
            await asyncio.Event().wait()
    finally:
        if api_server is not None and api_task is not None and not api_task.done():
            api_server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(api_task), timeout=5)
        await approvals.stop()
        if dispatcher is not None:
            dispatcher.stop()
        if decisions is not None:
            await decisions.stop()
        if dataplane is not None:
            dataplane.stop()
        if pump is not None:
            # The records of the sessions that just closed go in before the writer's last commit.
            pump.stop()
        await audit.close()
        await engine.dispose()


def serve_forever(settings: Settings, api: bool = True, proxy: bool = True) -> None:
    """Run `serve` until SIGINT or SIGTERM, then stop cleanly (for the `pgward serve` command)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(serve(settings, api=api, proxy=proxy))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
