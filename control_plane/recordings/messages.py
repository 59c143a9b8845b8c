"""Split each direction of a recording back into PostgreSQL protocol messages."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from control_plane.recordings.reader import Frame

_LEN = struct.Struct("!I")


@dataclass(frozen=True)
class Message:
    direction: str  # "client" | "server"
    offset_us: int  # when the frame that completed it was relayed
    tag: str
    body: bytes


class _Stream:
    """One direction's byte stream; messages may span frames."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.buf = bytearray()

    def feed(self, data: bytes, offset_us: int) -> Iterator[Message]:
        self.buf += data
        at = 0
        buf = self.buf
        while len(buf) - at >= 5:
            (length,) = _LEN.unpack_from(buf, at + 1)
            end = at + 1 + length
            if end > len(buf):
                break
            yield Message(self.direction, offset_us, chr(buf[at]), bytes(buf[at + 5 : end]))
            at = end
        del buf[:at]


def messages(frames: Iterator[Frame]) -> Iterator[Message]:
    """Messages of both directions in relay order (the recording starts at a message boundary)."""
    streams = {"client": _Stream("client"), "server": _Stream("server")}
    for frame in frames:
        yield from streams[frame.direction].feed(frame.data, frame.offset_us)
