"""Moves the data plane's audit records into the writer: one wake-up per burst, and only as many
records as the writer has room for, so a slow store pushes back into the data plane's queue (and
from there onto the sessions) instead of growing memory."""

from __future__ import annotations

import asyncio
import os

from control_plane.audit.writer import AuditWriter
from control_plane.dataplane import Dataplane


class AuditPump:
    def __init__(self, dataplane: Dataplane, writer: AuditWriter) -> None:
        self.dataplane = dataplane
        self.writer = writer
        self._fd = dataplane.audit_wake_fd()
        self._loop: asyncio.AbstractEventLoop | None = None
        writer.on_room.append(self.drain)
        writer.on_acks.append(dataplane.audit_ack)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_wake)
        self._on_wake()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self.drain()

    def _on_wake(self) -> None:
        try:
            os.read(self._fd, 4096)
        except BlockingIOError:
            pass
        self.drain()

    def drain(self) -> None:
        """Take what the writer has room for; the rest waits in the data plane (back-pressure).
        The writer calls this again after each commit."""
        room = self.writer.room()
        if room > 0:
            events = self.dataplane.take_audit_events(room)
            if events:
                self.writer.extend_raw(events)
