"""Compress JSON, XML and text answers the client accepts compressed.

gzip, or brotli when the client prefers it and the ``brotli`` package is installed. Only
whole answers (`web.Response`) of at least ``server.compression_min_bytes``: never SSE
streams, never bodies already encoded. Bodies of ``server.compression_offload_bytes`` or
more (default `OFFLOAD_BYTES`) are compressed on a worker thread so a 10,000-row answer
does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from typing import Final

from aiohttp import web

__all__ = ["Compressor", "pick_encoding"]

try:  # optional: `pip install tollway[brotli]`
    import brotli
except ImportError:  # pragma: no cover - brotli is installed by the dev extra
    brotli = None

OFFLOAD_BYTES: Final = 256 * 1024
_COMPRESSIBLE: Final = ("application/json", "application/xml", "text/", "application/problem+json")
_GZIP_LEVEL: Final = 5
_BROTLI_QUALITY: Final = 4


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)


def _brotli(body: bytes) -> bytes:
    assert brotli is not None
    return bytes(brotli.compress(body, quality=_BROTLI_QUALITY))


_CODERS: dict[str, Callable[[bytes], bytes]] = {"gzip": _gzip}
if brotli is not None:
    _CODERS["br"] = _brotli


def pick_encoding(accept_encoding: str) -> str | None:
    """The coding to use for `accept_encoding`: the client's highest q, brotli on ties."""
    best: tuple[float, int, str] | None = None
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name == "*":
            name = "br" if "br" in _CODERS else "gzip"
        if name not in _CODERS or quality <= 0:
            continue
        candidate = (quality, 1 if name == "br" else 0, name)
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else None


class Compressor:
    """Compresses a whole answer for a client that accepts it."""

    __slots__ = ("_loop", "_min_bytes", "_offload_bytes")

    def __init__(self, min_bytes: int, *, offload_bytes: int = OFFLOAD_BYTES) -> None:
        self._min_bytes = min_bytes
        self._offload_bytes = offload_bytes

    async def compress(self, request: web.Request, response: web.StreamResponse) -> None:
        if type(response) is not web.Response:
            return  # streams (SSE) go out as they are
        body = response.body
        if not isinstance(body, bytes) or len(body) < self._min_bytes:
            return
        headers = response.headers
        if "Content-Encoding" in headers:
            return
        if not response.content_type.startswith(_COMPRESSIBLE):
            return
        headers.add("Vary", "Accept-Encoding")
        coding = pick_encoding(request.headers.get("Accept-Encoding", ""))
        if coding is None:
            return
        coder = _CODERS[coding]
        if len(body) >= self._offload_bytes:
            compressed = await asyncio.get_running_loop().run_in_executor(None, coder, body)
        else:
            compressed = coder(body)
        response.body = compressed
        headers["Content-Encoding"] = coding
