"""Messages between a gateway and its DuckDB worker: length-prefixed frames on a socket.

A frame is a header (the body's length and the id of the query it belongs to, 0 for the
worker's own messages) and a pickled body. Bodies are read back with an unpickler that
builds only the value types DuckDB hands out (dates, times, decimals, UUIDs, time zones)
and refuses every other global, so a frame can carry data but never name code to run.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import socket
import struct
import zoneinfo
from typing import Any, Final

__all__ = ["HEADER", "FrameError", "decode", "encode", "read_frame", "recv_frame"]

HEADER: Final = struct.Struct(">IQ")
"""The body's length in bytes, then the query id."""

_ALLOWED: Final = frozenset(
    {
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("zoneinfo", "ZoneInfo"),
    }
)


class FrameError(Exception):
    """A frame that could not be read: a value of a type no frame may carry."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise FrameError(f"a frame may not carry {module}.{name}")
        return super().find_class(module, name)


def _zone_by_key(zone: zoneinfo.ZoneInfo) -> tuple[Any, tuple[str | None]]:
    # ZoneInfo pickles itself through getattr; by its key it needs the class alone
    return zoneinfo.ZoneInfo, (zone.key,)


def encode(query_id: int, body: Any) -> list[bytes]:
    """The frame for `body`, as pieces to write in order."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {zoneinfo.ZoneInfo: _zone_by_key}
    pickler.dump(body)
    payload = buffer.getbuffer()
    return [HEADER.pack(len(payload), query_id), bytes(payload)]


def decode(payload: bytes) -> Any:
    """A frame's body; `FrameError` for anything but the allowed types."""
    try:
        return _Unpickler(io.BytesIO(payload)).load()
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - any broken body is one kind of error
        raise FrameError(f"a frame could not be read: {type(exc).__name__}") from None


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame's query id and body; `asyncio.IncompleteReadError` at the end."""
    length, query_id = HEADER.unpack(await reader.readexactly(HEADER.size))
    return query_id, await reader.readexactly(length)


def recv_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next frame's query id and body, blocking; None once the peer has gone."""
    head = _recv_exactly(sock, HEADER.size)
    if head is None:
        return None
    length, query_id = HEADER.unpack(head)
    body = _recv_exactly(sock, length)
    return None if body is None else (query_id, body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return bytes(buffer)
