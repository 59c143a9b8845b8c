"""The decision service: answers the data plane's questions about credentials, session scope
and statements. Only uncached questions reach it; answers say how they may be cached."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from control_plane.approvals.directory import remember
from control_plane.approvals.gateway import StatementReviews
from control_plane.audit.chain import canonical_body
from control_plane.audit.writer import AuditWriter, identity_fields
from control_plane.config import Settings
from control_plane.connections.service import ConnectionTarget, get_connection_for_session
from control_plane.identity.credentials import AuthError, CredentialVerifier, Identity
from control_plane.identity.throttle import LoginThrottle
from control_plane.policy.engine import PolicyEngine, Refusal, StatementDecision
from control_plane.policy.masking import (
    Catalog,
    CatalogCache,
    MaskingUnavailable,
    ResolvedMasks,
    SessionMasking,
    mask_key,
    resolve,
)
from control_plane.policy.runtime import PolicyWatcher
from control_plane.store.db import SessionMaker

log = structlog.get_logger("pgward.proxy")

# Startup parameters a client may pass on to the target: plain session settings. Anything else
# (`role`, `session_authorization`, `default_transaction_read_only`, `options`, …) could change
# who the session is or what it may do, so it is refused rather than silently dropped.
FORWARDED_STARTUP_PARAMS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "bytea_output",
        "standard_conforming_strings",
        "geqo",
    }
)
# Classes whose statements can change the target's catalog (what masks resolve against).
CATALOG_CHANGING_CLASSES = frozenset({"ddl", "destructive_ddl", "admin"})
# Set by the client on the wire but decided by the gateway itself.
GATEWAY_STARTUP_PARAMS = frozenset({"user", "database", "replication"})

_HUMAN_KINDS = {
    "DropdbStmt": "DROP DATABASE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "DropStmt": "DROP",
    "TruncateStmt": "TRUNCATE",
}


@dataclass
class SessionInfo:
    identity: Identity
    connection: str
    client_addr: str
    # Unique across processes and restarts (the data plane's integer id is per process): audit
    # records and session recordings are keyed by it.
    session_uuid: str


class DecisionService:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: SessionMaker,
        verifier: CredentialVerifier,
        audit: AuditWriter | None = None,
    ) -> None:
        self.settings = settings
        # Session start and end and denied logins are written here; statements by the data plane.
        self.audit = audit if audit is not None and audit.enabled else None
        # Called before a session's end is recorded: the data plane's queued statement records of
        # the session go into the chain first.
        self.before_session_end: list[Callable[[], None]] = []
        self.sessionmaker = sessionmaker
        self.verifier = verifier
        self.deny_kinds = frozenset(settings.deny_statements)
        # Part of every scope key: a changed deny list must never reuse cached decisions.
        self.policy_version = hashlib.sha256(",".join(sorted(self.deny_kinds)).encode()).hexdigest()[:12]
        self.sessions: dict[int, SessionInfo] = {}
        self.throttle = LoginThrottle.from_settings(settings)
        self.engine = PolicyEngine(public_url=settings.public_url)
        self.watcher = PolicyWatcher(self.engine, sessionmaker, interval=settings.policy_poll_interval)
        # Called when cached decisions may be stale (policies changed, or a session's search_path
        # diverged): the server subscribes `dataplane.invalidate`.
        self.on_policies_changed: list[Callable[[], None]] = []
        self.watcher.listeners.append(self._invalidate)
        self.engine.on_cache_unsafe.append(self._invalidate)
        self._started = False
        self._start_lock = asyncio.Lock()
        self.catalogs = CatalogCache()
        # Resolved masks by (rules, catalog snapshot): sessions of one identity share the work.
        self._resolved: dict[tuple[str, str], ResolvedMasks] = {}
        self._mask_key: str | None = None
        self.reviews = StatementReviews(settings, sessionmaker)

    async def start(self) -> None:
        """Load the policies and watch the store for changes (idempotent)."""
        async with self._start_lock:
            if self._started:
                return
            await self.watcher.refresh(force=True)
            self.watcher.start()
            self.reviews.holds.start()
            self._started = True

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.reviews.holds.stop()

    def _invalidate(self) -> None:
        for callback in list(self.on_policies_changed):
            callback()
        # A decision answered just before the change may reach the data plane's cache just after the
        # clear; a second clear a moment later removes such stragglers.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(0.2, lambda: [callback() for callback in list(self.on_policies_changed)])

    async def authenticate(self, request: dict[str, Any]) -> dict[str, Any]:
        verified: list[Identity] = []
        answer = await self._authenticate(request, verified)
        if self.audit is None:
            return answer
        record: dict[str, Any] = {
            "client_addr": request["client_addr"],
            "connection": request["database"],
            "user": request["user"],
        }
        if verified:
            record["identity"] = identity_fields(verified[0])
        if answer.get("ok"):
            scope = answer["scope"]
            record.update(kind="session_start", session=scope["session_uuid"], connection=scope["connection"])
            record["policy_version"] = self.engine.version
            seq = self.audit.append(record)
            if self.audit.strict:
                # Nothing of the session reaches the target before its start is on record.
                await self.audit.durable(seq)
        else:
            record.update(
                kind="login_denied",
                decision="deny",
                sqlstate=answer.get("sqlstate"),
                refusal={"sqlstate": answer.get("sqlstate"), "message": answer.get("message")},
            )
            self.audit.append(record)
        return answer

    def _audit_scope(self, identity: Identity, client_addr: str) -> dict[str, Any]:
        if self.audit is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "strict": self.audit.strict,
            "identity_json": canonical_body(identity_fields(identity)),
            "username": identity.username,
            "client_addr": client_addr,
            "parameters": self.settings.audit_parameters,
            "policy_version": self.engine.version,
        }

    async def _authenticate(self, request: dict[str, Any], verified: list[Identity]) -> dict[str, Any]:
        user: str = request["user"]
        database: str = request["database"]
        client_addr: str = request["client_addr"]
        # Brute force: an address with recent failures waits before every answer, success or not,
        # so an attacker cannot tell a refusal early by its speed.
        await self.throttle.wait(client_addr)
        try:
            identity = await self.verifier.verify(user, request["password"])
        except AuthError as e:
            self.throttle.failed(client_addr)
            log.info("login refused", user=user, connection=database, client=client_addr, reason=e.message)
            return _refusal(e.sqlstate, e.message, hint=e.hint)
        verified.append(identity)

        forwarded: dict[str, str] = {}
        for name, value in request["startup_params"].items():
            key = name.lower()
            if key in GATEWAY_STARTUP_PARAMS:
                continue
            if key not in FORWARDED_STARTUP_PARAMS:
                return _refusal(
                    "42501",
                    f'startup parameter "{name}" is not allowed through pgward',
                    hint="set session parameters with SET after connecting",
                )
            forwarded[name] = value

        async with self.sessionmaker() as session:
            target = await get_connection_for_session(session, database, settings=self.settings)
        if target is None:
            return _refusal(
                "3D000",
                f'pgward has no connection named "{database}"',
                hint="the database name in your connection string is the name of a pgward connection",
            )
        if not self._started:
            await self.start()
        startup_path = next((v for k, v in forwarded.items() if k.lower() == "search_path"), None)
        grant = self.engine.session_scope(
            identity, target.name, login_role=target.username, search_path=startup_path
        )
        if isinstance(grant, Refusal):
            log.info("session refused by policy", identity=identity.subject, connection=target.name)
            answer = _refusal(grant.sqlstate, grant.message, hint=grant.hint)
            if grant.detail:
                answer["detail"] = grant.detail
            return answer
        # Every session needs the target's catalog: a statement that reads a view must be allowed to
        # read what the view reads, and only the catalog says what that is. Fail closed without it.
        try:
            catalog = await self.catalogs.get(target)
        except MaskingUnavailable as e:
            log.warning("catalog could not be read", connection=target.name, error=str(e))
            if e.unreachable and not grant.masking.active:
                # The session could not reach the target either: say so as the upstream would.
                return _refusal(
                    "08006",
                    f'pgward could not connect to the target of connection "{target.name}"',
                    hint=f"{e}; try again, or ask the pgward operator to check the connection",
                )
            if grant.masking.active:
                return _refusal(
                    "28000",
                    f'masking could not be established for connection "{target.name}", so pgward '
                    "will not start the session",
                    hint=f"pgward could not read the target's catalog ({e}); try again, or ask the "
                    "pgward operator to check the connection",
                )
            return _refusal(
                "28000",
                f'pgward could not read the catalog of connection "{target.name}", so it cannot check '
                "what views read and will not start the session",
                hint=f"{e}; try again, or ask the pgward operator to check the connection",
            )
        self.engine.set_catalog(target.name, catalog)
        masks: ResolvedMasks | None = None
        if grant.masking.active:
            try:
                masks = await self._masks(grant.masking, target, catalog)
            except MaskingUnavailable as e:
                # Never start a session without its masks.
                log.warning("masking could not be established", connection=target.name, error=str(e))
                return _refusal(
                    "28000",
                    f'masking could not be established for connection "{target.name}", so pgward '
                    "will not start the session",
                    hint=f"pgward could not read the target's catalog ({e}); try again, or ask the "
                    "pgward operator to check the connection",
                )
        await remember(self.sessionmaker, identity)
        self.engine.open_session(request["session_id"], grant)
        if masks is not None:
            self.engine.set_masks(request["session_id"], masks)
        session_uuid = str(uuid.uuid4())
        self.sessions[request["session_id"]] = SessionInfo(identity, target.name, client_addr, session_uuid)
        log.info(
            "session authorised",
            session_id=request["session_id"],
            session_uuid=session_uuid,
            identity=identity.subject,
            connection=target.name,
            client=client_addr,
            policies=list(grant.policies),
            run_as=grant.run_as,
            read_only=grant.read_only,
            masked_columns=len(masks.masks) if masks else 0,
            detectors=[kind for kind, _ in grant.masking.detectors],
        )
        # The grant's key has the policy version, identity, groups and connection; the deny list's
        # hash joins it so a changed deny list never reuses cached decisions either. Masked sessions
        # add their rules and catalog snapshot: leak analysis depends on both, so sessions with
        # different masks never share cached decisions.
        # Decisions on views depend on the catalog snapshot too (the engine also clears the cache when a
        # connection's snapshot changes, for the sessions already open).
        scope_key = f"{grant.cache_key}|{self.policy_version}|c{catalog.digest}"
        if masks is not None:
            scope_key += f"|m{grant.masking.key()}-{masks.digest}"
        return {
            "ok": True,
            "scope": {
                "scope_key": scope_key,
                "masks": masks.scope_masks() if masks is not None else [],
                "detectors": grant.masking.scope_detectors(),
                "mask_key": self._hash_key() if masks is not None or grant.masking.detectors else "",
                "setup_sql": grant.setup_sql(),
                "identity": identity.subject,
                "session_uuid": session_uuid,
                "identity_detail": _identity_detail(identity),
                "connection": target.name,
                "audit": self._audit_scope(identity, client_addr),
                "upstream": {
                    "host": target.host,
                    "port": target.port,
                    "database": target.database,
                    "user": target.username,
                    "password": target.password,
                    "tls_mode": target.tls_mode,
                    "sslrootcert": target.sslrootcert_path,
                    "startup_params": forwarded,
                },
            },
        }

    async def _masks(
        self, masking: SessionMasking, target: ConnectionTarget, catalog: Catalog | None = None
    ) -> ResolvedMasks:
        if catalog is None:
            catalog = await self.catalogs.get(target)
        key = (f"{target.name}|{masking.key()}", catalog.digest)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = resolve(masking, catalog)
            if len(self._resolved) > 256:
                self._resolved.clear()
            self._resolved[key] = resolved
        return resolved

    def _hash_key(self) -> str:
        if self._mask_key is None:
            self._mask_key = mask_key(self.settings.secret_key_bytes())
        return self._mask_key

    def decide(self, request: dict[str, Any]) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        session_id: int = request["session_id"]
        info = self.sessions.get(session_id)
        if info is None:
            # Fail closed: a statement of a session pgward does not know is never forwarded.
            return {
                "action": "deny",
                "sqlstate": "42501",
                "message": "statement refused: pgward has no scope for this session",
                "cache": "none",
            }
        decision = self.engine.decide(
            info.identity, info.connection, session_id, request["sql"], request.get("source", "query")
        )
        if decision.action == "allow" and CATALOG_CHANGING_CLASSES & set(decision.classes):
            # The statement may change what masks resolve to: the next session reads the catalog anew.
            self.catalogs.invalidate(info.connection)
            if self.engine.policy_set.masks_anything(info.connection):
                # A cached decision would skip this invalidation when the statement is repeated.
                decision.cache = "none"
        if decision.action == "allow" or decision.approval is not None:
            for kind in decision.kinds:
                if kind in self.deny_kinds:
                    human = _HUMAN_KINDS.get(kind, kind)
                    detail = f"{kind} is on the gateway's deny list (PGWARD_DENY_STATEMENTS)"
                    if len(decision.kinds) > 1:
                        detail += f"; the whole query of {len(decision.kinds)} statements was refused"
                    return {
                        "action": "deny",
                        "sqlstate": "42501",
                        "message": f"{human} is not allowed through pgward",
                        "detail": detail,
                        "hint": "ask the pgward operator if you need to run it",
                        "cache": decision.cache,
                        "audit": self._audit_meta(decision, rule="deny_statements"),
                    }
        if decision.approval is not None:
            # Needs the store (open or use a review): answered by a task, not inline.
            return self.reviews.answer(
                info.identity,
                info.connection,
                info.session_uuid,
                request["sql"],
                request.get("source", "query"),
                decision,
                audit=self._audit_meta(decision),
            )
        answer = decision.answer()
        answer["audit"] = self._audit_meta(decision)
        return answer

    def _audit_meta(self, decision: StatementDecision, *, rule: str | None = None) -> dict[str, Any]:
        """What the audit records of this decision say about it; the data plane caches it with the
        decision, so repeated statements are recorded with it too."""
        return {
            "class": ",".join(decision.classes) or None,
            "policy": None if rule else decision.policy,
            "rule": rule or decision.rule,
            "kinds": list(decision.kinds),
            "classes": list(decision.part_classes),
            "policy_version": self.engine.version,
        }

    def session_ended(self, request: dict[str, Any]) -> None:
        info = self.sessions.pop(request["session_id"], None)
        self.engine.close_session(request["session_id"])
        if info is not None and self.audit is not None:
            for drain in self.before_session_end:
                drain()
            self.audit.append(
                {
                    "kind": "session_end",
                    "session": info.session_uuid,
                    "connection": info.connection,
                    "identity": identity_fields(info.identity),
                    "client_addr": info.client_addr,
                    "reason": request.get("reason"),
                }
            )
        if info is not None:
            log.info(
                "session ended",
                session_id=request["session_id"],
                identity=info.identity.subject,
                reason=request.get("reason"),
            )


def _refusal(sqlstate: str, message: str, *, hint: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": False, "sqlstate": sqlstate, "message": message}
    if hint:
        answer["hint"] = hint
    return answer


def _identity_detail(identity: Identity) -> str:
    """Who the session is, as JSON for the session recording's header (never the credential)."""
    import json

    return json.dumps(
        {
            "subject": identity.subject,
            "username": identity.username,
            "groups": list(identity.groups),
            "issuer": identity.issuer,
            "kind": identity.kind,
            "credential": identity.credential,
            "acting_for": identity.acting_for.subject if identity.acting_for else None,
        }
    )
