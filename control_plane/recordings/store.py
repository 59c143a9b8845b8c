"""The recording index: a scan of the recording directory (headers and trailers only).

A directory scan rather than a table: the files are the source of truth (a crash leaves a file
without a trailer, which a table would have to be reconciled with), and reading a header and a
trailer costs two small reads per file. The API must see the same directory as the proxy (one
process with `pgward serve`, or a shared volume)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_plane.recordings.reader import RecordingError, summary

_UUID = re.compile(r"^[0-9a-f-]{1,64}$")


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class SessionRecord:
    session_uuid: str
    identity: str
    username: str | None
    connection: str
    client_addr: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    size: int
    complete: bool
    meta: dict[str, Any]
    trailer: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.session_uuid,
            "identity": self.identity,
            "username": self.username,
            "groups": (self.meta.get("identity_detail") or {}).get("groups"),
            "connection": self.connection,
            "client_addr": self.client_addr,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_reason": self.end_reason,
            "size": self.size,
            "complete": self.complete,
            "client_bytes": (self.trailer or {}).get("client_bytes"),
            "server_bytes": (self.trailer or {}).get("server_bytes"),
        }


def _time(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC)


def path_of(directory: Path, session_uuid: str) -> Path | None:
    if not _UUID.match(session_uuid):
        return None
    path = directory / f"{session_uuid}.pgwrec"
    return path if path.is_file() else None


def load(path: Path) -> SessionRecord | None:
    try:
        s = summary(path)
    except (OSError, RecordingError, ValueError):
        return None
    meta, trailer = s.meta, s.trailer
    detail = meta.get("identity_detail") or {}
    return SessionRecord(
        session_uuid=str(meta.get("session_uuid", path.stem)),
        identity=str(meta.get("identity", "")),
        username=detail.get("username"),
        connection=str(meta.get("connection", "")),
        client_addr=str(meta.get("client_addr", "")),
        started_at=_time(meta.get("started_at_us", 0)) or datetime.fromtimestamp(0, tz=UTC),
        ended_at=_time(trailer.get("ended_at_us")) if trailer else None,
        end_reason=trailer.get("end_reason") if trailer else None,
        size=s.size,
        complete=s.complete,
        meta=meta,
        trailer=trailer,
    )


def get(directory: Path, session_uuid: str) -> SessionRecord | None:
    path = path_of(directory, session_uuid)
    return load(path) if path is not None else None


def _encode(record: SessionRecord) -> str:
    key = f"{record.started_at.timestamp():.6f}|{record.session_uuid}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[float, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, sid = text.partition("|")
        return float(ts), sid
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor("invalid cursor: pass next_cursor from a previous page unchanged") from None


def search(
    directory: Path,
    *,
    identity: str | None = None,
    connection: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[SessionRecord], str | None]:
    """Newest first; `identity` matches the subject or the user name; since/until bound the start."""
    after = _decode(cursor) if cursor else None
    records: list[SessionRecord] = []
    if directory.is_dir():
        for path in directory.glob("*.pgwrec"):
            record = load(path)
            if record is None:
                continue
            if identity and identity not in (record.identity, record.username):
                continue
            if connection and record.connection != connection:
                continue
            if since and record.started_at < since:
                continue
            if until and record.started_at >= until:
                continue
            records.append(record)
    records.sort(key=lambda r: (r.started_at.timestamp(), r.session_uuid), reverse=True)
    if after is not None:
        records = [r for r in records if (round(r.started_at.timestamp(), 6), r.session_uuid) < after]
    page = records[:limit]
    next_cursor = _encode(page[-1]) if len(records) > limit and page else None
    return page, next_cursor
