"""Type stubs for the Rust extension `control_plane._dataplane` (see dataplane/src/py.rs)."""

from typing import Any

DEFAULT_MAX_MESSAGE: int

class Dataplane:
    """The proxy listener, its sessions and the decision cache, running on Rust threads."""

    def __init__(
        self,
        listen: str,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        *,
        allow_plaintext: bool = False,
        max_message_size: int = ...,
        worker_threads: int = 0,
        connect_timeout_s: float = 10.0,
        startup_timeout_s: float = 30.0,
        decision_timeout_s: float = 30.0,
        audit_queue_size: int = 10_000,
        audit_strict_timeout_s: float = 10.0,
        recording_dir: str | None = None,
        recording_level: int = 1,
    ) -> None: ...
    def start(self) -> str:
        """Bind and serve; returns the bound ``host:port``. Raises OSError when it cannot bind."""
    def local_addr(self) -> str | None: ...
    def wake_fd(self) -> int:
        """Readable when requests wait; read its bytes, then call :meth:`take_requests`."""
    def take_requests(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Drain the queue: ``(request_id, kind, payload)`` with kind authenticate|decide|session_end."""
    def respond(self, request_id: int, answer: dict[str, Any]) -> bool:
        """Answer a request; False when nobody waits any more. ValueError on a malformed answer."""
    def audit_wake_fd(self) -> int:
        """Readable when audit records wait; read its bytes, then call :meth:`take_audit_events`."""
    def take_audit_events(
        self, max: int
    ) -> list[
        tuple[int, str, str, str, str, str, str, str, str | None, str, str | None, str]
    ]:
        """Up to ``max`` records: ``(ack, time, kind, session, identity, username, connection,
        decision, class, statement, sqlstate, body)``."""
    def audit_pending(self) -> int:
        """Audit records waiting in the data plane's queue."""
    def audit_ack(self, ids: list[int]) -> None:
        """Strict mode: these records are committed; their statements may go upstream."""
    def invalidate(self) -> None:
        """Forget every cached decision."""
    def stats(self) -> dict[str, int]: ...
    def stop(self) -> None:
        """Stop listening and close every session."""

def detect(value: str | bytes) -> list[str]:
    """The kinds of content the data plane's detectors find in ``value``: ``email``, ``card``, ``ssn``,
    ``phone`` (the scanners that mask output columns without an origin)."""

def detect_counts(values: list[str | bytes | None]) -> dict[str, int]:
    """For each kind, how many of ``values`` contain it (None is skipped)."""
