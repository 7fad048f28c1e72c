"""A request's id: a sane ``X-Request-ID`` accepted as it is, else a new one.

New ids are a per-process random prefix and a counter, in hex: unique across processes
and restarts, and made without a system call (``os.urandom`` per request showed in
profiles of the hot path).
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Final

from aiohttp import web

__all__ = ["RequestIds", "new_request_id", "request_id_key"]

request_id_key = web.RequestKey("request_id", str)

_SANE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    """An id for a request no app saw (the HTTP parser refused it): rare, so random."""
    return os.urandom(16).hex()


class RequestIds:
    """Ids for the requests of one app: ``<16 random hex digits><counter in hex>``."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"

    def for_request(self, offered: str | None) -> str:
        """`offered` when it is a sane id (letters, digits, ``._:-``, at most 128), else new."""
        if offered and _SANE.fullmatch(offered):
            return offered
        return self.new()
