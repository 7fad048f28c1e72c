"""JSON logs: one object per line, every line of a request tagged with its request id.

The request id (and, once known, the key id and tenant) travel in the request's one
context variable (`gateway.ops.request_usage.current_usage`), so code deep in a backend
logs them without being handed them. A redaction filter removes anything shaped like a
secret that slipped into a message. The access line is not a `logging` record: it is
one orjson call into `AccessLines`, a buffer flushed once per event-loop pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import Any, Final, TextIO

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from gateway.ops.request_usage import current_usage

__all__ = ["AccessLines", "configure_logging", "redact"]

_CONTEXT_FIELDS: Final = ("request_id", "key_id", "tenant")


_SECRET: Final = re.compile(
    r"(?i)(bearer\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(?:sk|gsk|tvly|tw|pk|rk)[-_][A-Za-z0-9_-]{12,}"
    r"|\bAIza[0-9A-Za-z_-]{20,}"
    r"|sha256:[0-9a-f]{64}"
    r"|\bgAAAAA[A-Za-z0-9_=-]{20,}"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@))"
)


def redact(text: str) -> str:
    """Replace every secret-shaped substring of `text` with ``[redacted]``."""
    return _SECRET.sub("[redacted]", text)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        usage = current_usage.get()
        if usage is not None:
            for key in _CONTEXT_FIELDS:
                value = getattr(usage, key)
                if value is not None and not hasattr(record, key):
                    setattr(record, key, value)
        if isinstance(record.msg, str) and record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class _Formatter(OrjsonFormatter):
    def formatException(self, ei: Any) -> Any:  # noqa: N802 - logging's name
        text = super().formatException(ei)
        return redact(text) if isinstance(text, str) else [redact(line) for line in text]


_installed: logging.StreamHandler[TextIO] | None = None
_access = logging.getLogger("tollway.access")
_root = logging.getLogger()
_second = -1
_second_text = ""


def _now_text() -> str:
    global _second, _second_text
    now = int(time.time())
    if now != _second:
        _second, _second_text = now, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
    return _second_text


class AccessLines:
    """The per-request access lines, in the same JSON shape as every other line, written
    straight to Tollway's handler: one orjson call per line instead of a LogRecord, a
    filter and a formatter. Lines bound for a file descriptor wait in a buffer that goes
    out in one write every `flush_s` (or once `max_buffered` bytes wait, and at
    shutdown), so a busy gateway makes a few writes a second, not one per request; a
    stream in memory (tests) is written at once. Their fields are ids, names and numbers
    chosen by the caller, so there is nothing for the redaction filter to find. Without
    Tollway's handler installed they go through `logging` as usual."""

    __slots__ = (
        "_buffered", "_buffering", "_lines", "_loop", "_stream", "_timer", "flush_s",
        "max_buffered",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        flush_s: float = 0.05,
        max_buffered: int = 64 * 1024,
    ) -> None:
        self._loop = loop
        self._lines: list[bytes] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stream: TextIO | None = None
        self._buffering = False
        self.flush_s = flush_s
        self.max_buffered = max_buffered

    def write(self, fields: dict[str, Any]) -> None:
        if not _access.isEnabledFor(logging.INFO):
            return
        stream = _stream()
        if stream is None:
            _access.info("request", extra=fields)
            return
        line = orjson.dumps(
            {"time": _now_text(), "level": "INFO", "logger": "tollway.access",
             "message": "request", **fields},
            option=orjson.OPT_APPEND_NEWLINE,
        )  # fmt: skip
        self._lines.append(line)
        self._buffered += len(line)
        if stream is not self._stream:
            self._stream, self._buffering = stream, _has_descriptor(stream)
        if self._buffered >= self.max_buffered or not self._buffering:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = b"".join(self._lines).decode()
        self._lines.clear()
        self._buffered = 0
        handler = _installed
        if handler is None:
            return
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        finally:
            handler.release()


def _has_descriptor(stream: TextIO) -> bool:
    """Whether writing `stream` costs a system call (a file, a pipe, a terminal)."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _stream() -> TextIO | None:
    """Tollway's handler's stream, while it is the root's and the access logger has no
    handler of its own; None otherwise (then lines take the `logging` path)."""
    handler = _installed
    if handler is None or handler not in _root.handlers or _access.handlers:
        return None
    return handler.stream


def configure_logging(level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Send every log line to `stream` (stderr) as JSON; returns the handler it installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        _Formatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tollway", False):
            root.removeHandler(old)
    handler._tollway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    global _installed
    _installed = handler
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True
    return handler
