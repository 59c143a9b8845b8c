"""Read a session recording (format version 1, docs/recording.md)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

MAGIC = b"PGWREC"
VERSION = 1
FOOTER_MAGIC = b"PGWE"
FROM_CLIENT = ord("C")
TO_CLIENT = ord("S")
_BLOCK = struct.Struct("<BII")
_FRAME = struct.Struct("<BQI")
# A data block never holds more than this (the writer's block size); refuse anything larger.
MAX_BLOCK = 1 << 20


class RecordingError(Exception):
    """Not a pgward recording, or one this version cannot read."""


@dataclass(frozen=True)
class Frame:
    direction: str  # "client" (what the client sent) | "server" (what the client received)
    offset_us: int
    data: bytes


@dataclass
class Header:
    version: int
    meta: dict[str, Any]
    data_start: int


@dataclass
class Summary:
    """What a listing needs without decompressing: header metadata, trailer (None if unfinished)."""

    meta: dict[str, Any]
    trailer: dict[str, Any] | None
    size: int
    complete: bool = field(default=False)


def read_header(f: BinaryIO) -> Header:
    head = f.read(12)
    if len(head) < 12 or head[:6] != MAGIC:
        raise RecordingError("not a pgward session recording")
    (version,) = struct.unpack_from("<H", head, 6)
    if version != VERSION:
        raise RecordingError(
            f"recording format version {version} is not supported (this pgward reads {VERSION})"
        )
    (meta_len,) = struct.unpack_from("<I", head, 8)
    meta = json.loads(f.read(meta_len))
    return Header(version, meta, 12 + meta_len)


def read_trailer(f: BinaryIO) -> dict[str, Any] | None:
    """The trailer located from the footer, or None when the recording did not finish."""
    f.seek(0, 2)
    size = f.tell()
    if size < 8:
        return None
    f.seek(size - 8)
    foot = f.read(8)
    if foot[4:] != FOOTER_MAGIC:
        return None
    (block_len,) = struct.unpack("<I", foot[:4])
    if block_len < _BLOCK.size or block_len > size - 8:
        return None
    f.seek(size - 8 - block_len)
    kind, stored, _raw = _BLOCK.unpack(f.read(_BLOCK.size))
    if kind != ord("T") or stored != block_len - _BLOCK.size:
        return None
    trailer: dict[str, Any] = json.loads(f.read(stored))
    return trailer


def summary(path: Path) -> Summary:
    with path.open("rb") as f:
        header = read_header(f)
        trailer = read_trailer(f)
    return Summary(header.meta, trailer, path.stat().st_size, complete=trailer is not None)


class Recording:
    """A recording file: `meta`, then `frames()` in order; `trailer` once frames are read."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        header = read_header(f)
        self.meta = header.meta
        self._start = header.data_start
        self.trailer: dict[str, Any] | None = None
        # Set when the file ends inside a block (a crash while writing): the prefix was read.
        self.truncated = False

    @classmethod
    def open(cls, path: Path) -> Recording:
        return cls(path.open("rb"))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        f = self._f
        f.seek(self._start)
        decompressor = zstandard.ZstdDecompressor()
        while True:
            head = f.read(_BLOCK.size)
            if not head:
                return
            if len(head) < _BLOCK.size:
                self.truncated = True
                return
            kind, stored, raw_len = _BLOCK.unpack(head)
            if stored > MAX_BLOCK or raw_len > MAX_BLOCK:
                raise RecordingError(f"block of {stored} bytes is larger than any the writer makes")
            body = f.read(stored)
            if len(body) < stored:
                self.truncated = True
                return
            if kind == ord("T"):
                self.trailer = json.loads(body)
                return
            if kind != ord("D"):
                raise RecordingError(f"unknown block kind {kind!r}")
            raw = decompressor.decompress(body, max_output_size=raw_len)
            if len(raw) != raw_len:
                raise RecordingError("a data block decompressed to the wrong length")
            at = 0
            while at < len(raw):
                direction, offset, length = _FRAME.unpack_from(raw, at)
                at += _FRAME.size
                yield Frame("client" if direction == FROM_CLIENT else "server", offset, raw[at : at + length])
                at += length
