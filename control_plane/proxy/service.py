"""The decision service: answers the data plane's questions about credentials, session scope
and statements. Only uncached questions reach it; answers say how they may be cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import structlog

from control_plane.config import Settings
from control_plane.connections.service import get_connection_for_session
from control_plane.identity.credentials import AuthError, CredentialVerifier, Identity
from control_plane.proxy.statements import UnparsableStatement, split
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


class DecisionService:
    def __init__(self, settings: Settings, sessionmaker: SessionMaker, verifier: CredentialVerifier) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.verifier = verifier
        self.deny_kinds = frozenset(settings.deny_statements)
        # Part of every scope key: a changed deny list must never reuse cached decisions.
        self.policy_version = hashlib.sha256(",".join(sorted(self.deny_kinds)).encode()).hexdigest()[:12]
        self.sessions: dict[int, SessionInfo] = {}

    async def authenticate(self, request: dict[str, Any]) -> dict[str, Any]:
        user: str = request["user"]
        database: str = request["database"]
        client_addr: str = request["client_addr"]
        try:
            identity = await self.verifier.verify(user, request["password"])
        except AuthError as e:
            log.info("login refused", user=user, connection=database, client=client_addr, reason=e.message)
            return _refusal(e.sqlstate, e.message, hint=e.hint)

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
        self.sessions[request["session_id"]] = SessionInfo(identity, target.name, client_addr)
        log.info(
            "session authorised",
            session_id=request["session_id"],
            identity=identity.subject,
            connection=target.name,
            client=client_addr,
        )
        return {
            "ok": True,
            "scope": {
                "scope_key": f"{identity.issuer}|{identity.subject}|{target.name}|{self.policy_version}",
                "identity": identity.subject,
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

    def decide(self, request: dict[str, Any]) -> dict[str, Any]:
        sql: str = request["sql"]
        try:
            statements = split(sql)
        except UnparsableStatement as e:
            # Fail closed: what the parser cannot read is not forwarded.
            return {
                "action": "deny",
                "sqlstate": "42601",
                "message": f"pgward could not parse the statement: {e.message}",
                "cache": "none",
            }
        for statement in statements:
            if statement.kind in self.deny_kinds:
                human = _HUMAN_KINDS.get(statement.kind, statement.kind)
                detail = f"{statement.kind} is on the gateway's deny list (PGWARD_DENY_STATEMENTS)"
                if len(statements) > 1:
                    detail += f"; the whole query of {len(statements)} statements was refused"
                return {
                    "action": "deny",
                    "sqlstate": "42501",
                    "message": f"{human} is not allowed through pgward",
                    "detail": detail,
                    "hint": "ask the pgward operator if you need to run it",
                    # The decision depends only on statement types, never on constants.
                    "cache": "fingerprint",
                }
        return {"action": "allow", "cache": "fingerprint"}

    def session_ended(self, request: dict[str, Any]) -> None:
        info = self.sessions.pop(request["session_id"], None)
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
