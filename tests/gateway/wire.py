"""A minimal PostgreSQL wire client for tests that must send what real drivers never send."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@dataclass
class Message:
    tag: bytes
    body: bytes

    def fields(self) -> dict[str, str]:
        """ErrorResponse/NoticeResponse fields by their one-letter code."""
        out: dict[str, str] = {}
        for part in self.body.split(b"\0"):
            if part:
                out[chr(part[0])] = part[1:].decode(errors="replace")
        return out


def startup_packet(params: dict[str, str], major: int = 3, minor: int = 0) -> bytes:
    body = struct.pack("!I", (major << 16) | minor)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


class Wire:
    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect_tls(
        cls, host: str, port: int, ca: Path, *, direct: bool = False, alpn: list[str] | None = None
    ) -> Wire:
        raw = socket.create_connection((host, port), timeout=10)
        ctx = ssl.create_default_context(cafile=str(ca))
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        if not direct:
            raw.sendall(struct.pack("!II", 8, SSL_REQUEST))
            answer = raw.recv(1)
            assert answer == b"S", answer
        return cls(ctx.wrap_socket(raw, server_hostname=host))

    @classmethod
    def connect_plain(cls, host: str, port: int) -> Wire:
        return cls(socket.create_connection((host, port), timeout=10))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read(self) -> Message | None:
        """The next message, or None when the server closed the connection."""
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!I", self.buf[1:5])[0]:
            if not self._fill():
                return None
        length = struct.unpack("!I", self.buf[1:5])[0]
        msg = Message(self.buf[:1], self.buf[5 : 1 + length])
        self.buf = self.buf[1 + length :]
        return msg

    def read_until(self, tag: bytes) -> list[Message]:
        out: list[Message] = []
        while True:
            m = self.read()
            if m is None:
                return out
            out.append(m)
            if m.tag == tag:
                return out

    def login(
        self,
        user: str,
        password: str,
        database: str = "shop",
        minor: int = 0,
        extra: dict[str, str] | None = None,
    ) -> list[Message]:
        """Startup + password; the messages up to ReadyForQuery (or the error)."""
        self.send(startup_packet({"user": user, "database": database, **(extra or {})}, minor=minor))
        first = self.read()
        assert first is not None
        msgs = [first]
        while first.tag == b"v":
            nxt = self.read()
            assert nxt is not None
            msgs.append(nxt)
            first = nxt
        assert first.tag == b"R" and struct.unpack("!I", first.body[:4])[0] == 3, first
        self.send(message(b"p", password.encode() + b"\0"))
        rest = []
        while True:
            m = self.read()
            if m is None:
                break
            rest.append(m)
            if m.tag in (b"Z", b"E"):
                break
        return msgs + rest

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
