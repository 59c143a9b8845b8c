"""The SIEM sink: committed audit records as syslog messages (RFC 5424) over UDP or TCP.

`PGWARD_AUDIT_SYSLOG=udp://host:port` sends one datagram per record; `tcp://host:port` uses
octet-counting framing (RFC 6587). The message is the record's hashed body (JSON); structured data
`[pgward@32473 stream=… seq=… hash=…]` places it in its chain. Records reach the sink only after
they are committed to the store, which stays the record of truth: when the collector is away the
sink keeps up to `MAX_BACKLOG` messages, then drops the oldest and logs how many it dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger("pgward.audit.sink")

MAX_BACKLOG = 100_000
# local0; notice for refusals, info otherwise.
FACILITY = 16
ENTERPRISE = "pgward@32473"


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(values: Sequence[Any], hostname: str, procid: str) -> bytes:
    """One RFC 5424 message for a committed row (writer.COPY_COLUMNS order)."""
    stream, seq, time, kind = values[0], values[1], values[2], values[3]
    decision, digest, body = values[8], values[13], values[14]
    severity = 5 if decision == "deny" or kind == "login_denied" else 6
    sd = f'[{ENTERPRISE} stream="{_sd_value(str(stream))}" seq="{seq}" hash="{digest}"]'
    header = f"<{FACILITY * 8 + severity}>1 {time} {hostname} pgward {procid} {kind} {sd} "
    return header.encode() + b"\xef\xbb\xbf" + str(body).encode()


class SyslogSink:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
            raise ValueError("PGWARD_AUDIT_SYSLOG must look like udp://host:port or tcp://host:port")
        self.transport_kind = parts.scheme
        self.host, self.port = parts.hostname, parts.port
        self.hostname = socket.gethostname() or "-"
        self.procid = str(os.getpid())
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    def send(self, rows: Sequence[Sequence[Any]]) -> None:
        for values in rows:
            if len(self._queue) >= MAX_BACKLOG:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(format_message(values, self.hostname, self.procid))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pgward-audit-syslog")
        self._wake.set()

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        udp: socket.socket | None = None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self._dropped:
                log.warning(
                    "syslog sink dropped audit messages (the store still has them)", dropped=self._dropped
                )
                self._dropped = 0
            try:
                if self.transport_kind == "udp":
                    if udp is None:
                        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        udp.setblocking(False)
                        udp.connect((self.host, self.port))
                    while self._queue:
                        udp.send(self._queue[0])
                        self._queue.popleft()
                else:
                    if writer is None:
                        _, writer = await asyncio.open_connection(self.host, self.port)
                    while self._queue:
                        message = self._queue[0]
                        writer.write(f"{len(message)} ".encode() + message)
                        await writer.drain()
                        self._queue.popleft()
            except (OSError, ConnectionError) as e:
                log.warning("syslog sink cannot reach its collector; retrying", error=str(e))
                if writer is not None:
                    writer.close()
                    writer = None
                if udp is not None:
                    udp.close()
                    udp = None
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            # Give queued messages a moment to go out.
            for _ in range(50):
                if not self._queue:
                    break
                await asyncio.sleep(0.02)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
