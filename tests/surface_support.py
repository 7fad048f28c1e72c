"""What the tests of the wider OpenAI surface share: a config whose backends serve every
API, and the usage record of a request read back from the state store."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.state.service import state_service_key

__all__ = ["USAGE_FIELDS", "usage_row"]

USAGE_FIELDS = (
    "route_class", "backend", "model", "status", "tokens_in", "tokens_out", "tokens_cached",
    "tokens_reasoning", "audio_seconds", "audio_bytes", "images", "image_size", "rows_out",
)  # fmt: skip


async def usage_row(client: TestClient, request_id: str) -> dict[str, Any]:
    """The usage record of `request_id`, once the request has finished (bounded wait)."""
    service = client.app[state_service_key]
    for _ in range(100):
        await service.usage.flush()
        rows = await service.store.fetch(
            f"SELECT {', '.join(USAGE_FIELDS)} FROM tollway_usage WHERE request_id = ?",
            (request_id,),
        )
        if rows:
            return dict(zip(USAGE_FIELDS, rows[0], strict=True))
        await asyncio.sleep(0.02)
    raise AssertionError(f"no usage record for {request_id}")
