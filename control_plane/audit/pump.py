"""Moves the data plane's audit records into the writer, only as many as the writer has room for,
so a slow store pushes back into the data plane's queue (and from there onto the sessions) instead
of growing memory. Records are taken every flush interval, and at once when the data plane wakes
the loop (its queue is a quarter full, or a strict-mode session waits for its record)."""

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
        self._timer: asyncio.TimerHandle | None = None
        # At most every 10 ms even when flushing continuously; at least every second.
        self._interval = min(1.0, max(0.01, writer.settings.audit_flush_interval))
        writer.on_room.append(self.drain)
        writer.on_acks.append(dataplane.audit_ack)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_wake)
        self._on_wake()
        self._tick()

    def _tick(self) -> None:
        self.drain()
        if self._loop is not None:
            self._timer = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        if self._timer is not None:
            self._timer.cancel()
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
