"""A ``multipart/form-data`` body read as it streams in, never whole.

`Scanner` is fed the raw bytes in whatever pieces they come and tells where each part
starts (its offset in the body, delimiter included), its name and filename, its data
and its end. Data is handed on as soon as it cannot be the start of a delimiter, so an
upload passes through in pieces of the size it arrives in. Part headers are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from typing import Final

from gateway.errors import BadRequest

__all__ = ["Data", "End", "Event", "PartEnd", "PartStart", "Scanner", "boundary_of"]

MAX_HEADER_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None
    offset: int
    """Where the part begins in the body: its delimiter (with the CRLF before it)."""
    head: bytes
    """The part's raw header block, as the client wrote it."""


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class PartEnd:
    offset: int
    """Where the delimiter after the part's data begins."""


@dataclass(frozen=True, slots=True)
class End:
    pass


Event = PartStart | Data | PartEnd | End


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; 400 for anything else."""
    message = Message()
    message["Content-Type"] = content_type
    if message.get_content_type() != "multipart/form-data":
        raise BadRequest("expected a multipart/form-data body (a file upload)")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise BadRequest("the multipart body has no boundary in its Content-Type")
    return boundary.encode("latin-1")


@dataclass(slots=True)
class Scanner:
    boundary: bytes
    _buffer: bytearray = field(default_factory=bytearray)
    _base: int = 0
    """The body offset of `_buffer[0]`."""
    _state: str = "preamble"
    _part_offset: int = 0

    @property
    def ended(self) -> bool:
        return self._state == "end"

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes (with what came before it)."""
        if self._state == "end":
            return []  # the epilogue: ignored
        self._buffer += chunk
        events: list[Event] = []
        while True:
            step = getattr(self, f"_{self._state}")()
            if step is None:
                return events
            events.extend(step)
            if self._state == "end":
                return events

    def _consume(self, count: int) -> bytes:
        taken = bytes(memoryview(self._buffer)[:count])
        del self._buffer[:count]
        self._base += count
        return taken

    def _preamble(self) -> list[Event] | None:
        first = b"--" + self.boundary
        at = self._buffer.find(first)
        if at < 0:
            keep = len(first) - 1
            if len(self._buffer) > keep:
                self._consume(len(self._buffer) - keep)
            return None
        self._consume(at)
        self._part_offset = self._base
        self._consume(len(first))
        self._state = "after_delimiter"
        return []

    def _after_delimiter(self) -> list[Event] | None:
        if len(self._buffer) < 2:
            return None
        marker = self._consume(2)
        if marker == b"--":
            self._state = "end"
            return [End()]
        if marker != b"\r\n":
            raise BadRequest("the multipart body is malformed (a delimiter line)")
        self._state = "headers"
        return []

    def _headers(self) -> list[Event] | None:
        at = self._buffer.find(b"\r\n\r\n")
        if at < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise BadRequest("a multipart part's headers are too long")
            return None
        head = self._consume(at + 4)
        start = _part_start(head, self._part_offset)
        self._state = "body"
        return [start]

    def _body(self) -> list[Event] | None:
        delimiter = b"\r\n--" + self.boundary
        at = self._buffer.find(delimiter)
        if at < 0:
            safe = len(self._buffer) - (len(delimiter) - 1)
            if safe <= 0:
                return None
            offset = self._base
            return [Data(self._consume(safe), offset)] if safe else None
        events: list[Event] = []
        if at:
            offset = self._base
            events.append(Data(self._consume(at), offset))
        self._part_offset = self._base
        events.append(PartEnd(self._base))
        self._consume(len(delimiter))
        self._state = "after_delimiter"
        return events

    def _end(self) -> list[Event] | None:
        return None


def _part_start(head: bytes, offset: int) -> PartStart:
    message = Message()
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            message[key.strip()] = value.strip()
    if message.get_content_disposition() != "form-data":
        raise BadRequest("a multipart part lacks Content-Disposition: form-data")
    param = message.get_param("name", header="content-disposition")
    name = param[2] if isinstance(param, tuple) else param  # (RFC 2231 form)
    if not isinstance(name, str) or not name:
        raise BadRequest("a multipart part has no name")
    filename = message.get_filename()
    content_type = message.get("Content-Type")
    return PartStart(name, filename, content_type, offset, head)
