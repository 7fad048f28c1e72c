"""An audio upload passed to the provider as it streams in, never held whole.

The form's fields come first (the SDKs send ``model`` first and the file last): they are
read and checked, and the rest of the body is forwarded byte for byte as it arrives,
with only the ``model`` value changed to the provider's name for it, so the upstream
gets an exact ``Content-Length`` when the client sent one. The size limit
(``server.audio_max_bytes``) is counted while the bytes pass; a form that turns out
wrong after the file (a bad field after it) aborts the upload.

A client that sends the file before ``model`` (``curl -F file=@a.wav -F model=…``)
is served too: the file goes to a temporary file on disk while the remaining fields are
read, then the form is sent rebuilt, fields first.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Final

from aiohttp import StreamReader

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.llm.multipart import Data, End, Event, PartEnd, PartStart, Scanner

__all__ = ["Form", "Upload"]

MAX_FIELDS_BYTES: Final = 1024 * 1024
"""All the form's text fields together; anything larger is not a form of this API."""
_READ_BYTES: Final = 256 * 1024
"""Blocks read back from a spooled file."""
_CHUNK_BYTES: Final = 64 * 1024
"""The most taken from the client at once: what passes is held a piece at a time."""


@dataclass(slots=True)
class Form:
    fields: list[tuple[str, str]] = field(default_factory=list)
    file_name: str | None = None
    file_type: str | None = None
    file_bytes: int = 0
    has_file: bool = False
    complete: bool = False
    """The whole form was read (it has no file part, or the file was spooled)."""

    def get(self, name: str) -> str | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]


class Upload:
    """Reads the client's form from `content`, then hands the upstream body out once."""

    def __init__(
        self,
        content: StreamReader,
        boundary: bytes,
        *,
        max_bytes: int,
        declared_length: int | None,
        check_field: Callable[[Form, str, str], None],
    ) -> None:
        self._content = content
        self._scanner = Scanner(boundary)
        self._boundary = boundary
        self.max_bytes = max_bytes
        self.declared_length = declared_length
        self._check_field = check_field
        self.form = Form()
        self.received = 0
        self.started = False
        """Whether the upstream began to take the body: it cannot be sent again."""
        self.error: BaseException | None = None
        """What stopped the upload while it streamed (too large, malformed), to answer."""
        self._prefix = bytearray()
        self._pending: list[Event] = []
        self._model_range: tuple[int, int] | None = None
        self._current: PartStart | None = None
        self._value = bytearray()
        self._file_at: int | None = None
        self._spool: IO[bytes] | None = None
        self._file_head = b""
        self._fields_bytes = 0

    async def _chunk(self) -> bytes:
        chunk = await self._content.read(_CHUNK_BYTES)
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise PayloadTooLarge(
                f"audio upload is larger than {self.max_bytes} bytes (server.audio_max_bytes)"
            )
        return chunk

    def _field_event(self, event: Event) -> bool:
        """Track one event of a text field; True when it starts the file part."""
        if isinstance(event, PartStart):
            if event.filename is not None or event.name == "file":
                if self.form.has_file:
                    raise BadRequest("send one file per request", param="file")
                self.form.has_file = True
                self.form.file_name = event.filename or "upload"
                self.form.file_type = event.content_type
                return True
            self._current = event
            self._value.clear()
        elif isinstance(event, Data) and self._current is not None:
            self._fields_bytes += len(event.data)
            if self._fields_bytes > MAX_FIELDS_BYTES:
                raise BadRequest("the form's text fields are too large")
            if self._current.name == "model":
                start = self._model_range[0] if self._model_range else event.offset
                self._model_range = (start, event.offset + len(event.data))
            self._value += event.data
        elif isinstance(event, PartEnd) and self._current is not None:
            name, value = self._current.name, self._value.decode("utf-8", "replace")
            if name == "model" and self.form.get("model") is not None:
                raise BadRequest("'model' is given twice", param="model")
            self._check_field(self.form, name, value)
            self.form.fields.append((name, value))
            self._current = None
        return False

    async def read_fields(self) -> Form:
        """Read up to the file part (or to the end of a form without one) and ``model``;
        the file itself is left to stream, or spooled to disk when ``model`` comes after
        it."""
        while True:
            chunk = await self._chunk()
            if not chunk:
                raise BadRequest("the upload ended before the form did")
            self._prefix += chunk
            for index, event in enumerate(events := self._scanner.feed(chunk)):
                if isinstance(event, End):
                    self.form.complete = True
                    return self.form
                if self._field_event(event):
                    assert isinstance(event, PartStart)
                    self._file_at = event.offset
                    self._pending = list(events[index + 1 :])
                    if self.form.get("model") is None:
                        await self._spool_rest(event)
                        self.form.complete = True
                    return self.form
            if len(self._prefix) > MAX_FIELDS_BYTES + 64 * 1024:
                raise BadRequest("the form's text fields are too large")

    async def _spool_rest(self, start: PartStart) -> None:
        """The file came before ``model``: keep it on disk and read the rest of the form."""
        self._spool = tempfile.TemporaryFile(prefix="tollway-audio-")  # noqa: SIM115
        self._file_head = start.head
        events, in_file = self._pending, True
        self._pending = []
        while True:
            for event in events:
                if in_file:
                    if isinstance(event, Data):
                        self.form.file_bytes += len(event.data)
                        await asyncio.to_thread(self._spool.write, event.data)
                    elif isinstance(event, PartEnd):
                        in_file = False
                elif isinstance(event, End):
                    return
                elif self._field_event(event):
                    raise BadRequest("send one file per request", param="file")
            if self._scanner.ended:
                return
            chunk = await self._chunk()
            if not chunk:
                raise BadRequest("the upload ended before the form did")
            events = self._scanner.feed(chunk)

    def body(self, upstream_model: str) -> tuple[AsyncIterator[bytes], int | None]:
        """The body to send upstream, with ``model`` as the provider names it, and its
        length when known."""
        new_model = upstream_model.encode()
        if self._spool is not None:
            return self._rebuilt(new_model)
        prefix = bytes(self._prefix)
        old = 0
        if self._model_range is not None:
            start, end = self._model_range
            prefix = prefix[:start] + new_model + prefix[end:]
            old = end - start
        length = None
        if self.declared_length is not None:
            length = self.declared_length - old + len(new_model)
        return self._streamed(prefix), length

    async def _streamed(self, prefix: bytes) -> AsyncIterator[bytes]:
        self.started = True
        try:
            yield prefix
            in_file = self._file_at is not None
            events = self._pending
            while True:
                for event in events:
                    if in_file:
                        if isinstance(event, Data):
                            self.form.file_bytes += len(event.data)
                        elif isinstance(event, PartEnd):
                            in_file = False
                    elif self._field_event(event):
                        raise BadRequest("send one file per request", param="file")
                if self._scanner.ended:
                    break
                chunk = await self._chunk()
                if not chunk:
                    raise BadRequest("the upload ended before the form did")
                events = self._scanner.feed(chunk)
                yield chunk
            if not self.form.has_file and self.form.get("url") is None:
                raise BadRequest("'file' is required", param="file")
        except BaseException as exc:
            self.error = exc
            raise

    def _rebuilt(self, new_model: bytes) -> tuple[AsyncIterator[bytes], int]:
        dash = b"--" + self._boundary
        parts = []
        for name, value in self.form.fields:
            data = new_model if name == "model" else value.encode()
            head = f'Content-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode()
            parts.append(dash + b"\r\n" + head + data + b"\r\n")
        fields = b"".join(parts)
        file_head = dash + b"\r\n" + self._file_head
        tail = b"\r\n" + dash + b"--\r\n"
        length = len(fields) + len(file_head) + self.form.file_bytes + len(tail)
        return self._from_disk(fields + file_head, tail), length

    async def _from_disk(self, head: bytes, tail: bytes) -> AsyncIterator[bytes]:
        self.started = True
        spool = self._spool
        assert spool is not None
        try:
            yield head
            await asyncio.to_thread(spool.seek, 0)
            while block := await asyncio.to_thread(spool.read, _READ_BYTES):
                yield block
            yield tail
        finally:
            await asyncio.to_thread(spool.close)

    def close(self) -> None:
        if self._spool is not None and not self._spool.closed:
            self._spool.close()


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
