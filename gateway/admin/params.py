"""The admin API's query and path parameters, parsed strictly: a value that is not exactly
what the parameter takes is a 400 naming it, never a guess (``to=nan``, ``limit=1e3``)."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from gateway.errors import BadRequest
from gateway.state.key_changes import check_text, time_value

__all__ = ["key_id_param", "limit_param", "text_param", "time_param"]

_WHOLE: Final = re.compile(r"[0-9]{1,7}")


def time_param(request: web.Request, name: str, default: float) -> float:
    """A unix time or ISO 8601 time between 2000 and 2200, or `default` when absent."""
    raw = request.query.get(name)
    return default if raw is None else time_value(raw, name)


def limit_param(request: web.Request, name: str, default: int, most: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise BadRequest(f"'{name}' must be a whole number from 1 to {most}", param=name)
    return int(raw)


def text_param(request: web.Request, name: str) -> str | None:
    """A filter value (tenant, key id, action), if given: no control characters."""
    raw = request.query.get(name)
    return None if raw is None else check_text(raw, name)


def key_id_param(request: web.Request) -> str:
    return check_text(request.match_info["id"], "id")
