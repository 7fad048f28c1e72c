"""The protocol every backend adapter implements.

An adapter turns one kind of call (chat, search, SQL) into one provider's wire protocol
and translates that provider's failures into `gateway.errors.BackendError` subclasses,
`raise ... from exc`. It holds its own connection pool, opened in `start()` and closed in
`close()`. It contains no resilience logic: breaker, timeout budget, retries, outbound
limits and the bulkhead wrap it from outside (`gateway.resilience`), the same way for all.

Kinds:

* `LLMBackend`     OpenAI-compatible chat, streaming chat, embeddings, models, and the rest
                   of the OpenAI surface (responses, completions, moderations, images,
                   audio) through three generic calls: JSON, SSE events, relayed bytes
* `SearchBackend`  Tavily-compatible search and extract
* `SQLBackend`     read-only SQL with bound parameters
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "WORKER_EVENTS",
    "Backend",
    "BackendKind",
    "CallContext",
    "Column",
    "Factory",
    "Health",
    "JSONResponse",
    "LLMBackend",
    "OptionError",
    "QueryResult",
    "RunsWorkers",
    "SQLBackend",
    "SearchBackend",
    "StreamHead",
    "WorkerEvent",
    "reject_unknown_options",
    "rows_bytes",
    "sql_health",
]

BackendKind = Literal["llm", "search", "sql"]


class OptionError(ValueError):
    """An adapter option in the config is wrong; `key` is the option's name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def reject_unknown_options(options: Mapping[str, Any], known: frozenset[str], kind: str) -> None:
    """`OptionError` naming the first option the `kind` adapter does not understand."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError(unknown[0], f"unknown option for the {kind} adapter")


async def sql_health(backend: SQLBackend) -> Health:
    """A data backend's probe: ``SELECT 1`` within two seconds, timed."""
    started = time.perf_counter()
    try:
        await backend.query("SELECT 1", (), CallContext("health", "-"), timeout_s=2.0)
    except Exception as exc:  # noqa: BLE001 - any failure means not healthy
        return Health(False, type(exc).__name__, time.perf_counter() - started)
    return Health(True, "", time.perf_counter() - started)


class Factory(Protocol):
    """Every adapter module exposes ``create`` with this signature.

    It validates `options` (the backend's config keys its adapter understands) and
    returns an unstarted backend; it performs no I/O, so `tollway check-config` can call
    it. A wrong option raises `OptionError`.
    """

    def __call__(
        self,
        name: str,
        options: Mapping[str, Any],
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_response_bytes: int,
    ) -> Backend: ...


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a backend may know about the request it serves: never the caller's key."""

    request_id: str
    tenant: str
    deadline: float | None = None
    """Loop time (``loop.time()``) after which the call must give up."""


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""
    latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class JSONResponse:
    """An upstream's successful JSON answer, kept as bytes so it is not encoded twice."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The start of an upstream answer relayed as it arrives (audio, images): the first
    item of `LLMBackend.relay`, before the body's chunks."""

    status: int
    content_type: str
    content_length: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    """The backend's own type name, e.g. ``BIGINT``, ``DECIMAL(18,2)``, ``TIMESTAMPTZ``."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: Sequence[Column]
    rows: Sequence[Sequence[Any]]
    truncated: bool = False
    too_large: bool = False
    """Fetching stopped at ``max_bytes``: `rows` are those that fitted, in order."""


_SIZED = (str, bytes, bytearray, memoryview)
_NESTED = (list, tuple, dict, set, frozenset)


def rows_bytes(rows: Sequence[Sequence[Any]]) -> int:
    """About how many bytes `rows` take as JSON, counted column by column: text and binary
    by their length, nested values by their text, anything else (numbers, times) 24 bytes.
    Cheap enough for every fetched batch: one pass over the columns whose size varies."""
    if not rows:
        return 0
    width = len(rows[0])
    total = len(rows) * width * 24
    for index in range(width):
        sample = next((row[index] for row in rows if row[index] is not None), None)
        if isinstance(sample, _SIZED):
            # a column may mix text with other values (a date Python cannot hold comes as
            # text among dates): only the text is measured
            total += sum(len(v) for row in rows if isinstance(v := row[index], _SIZED))
        elif isinstance(sample, _NESTED):
            total += sum(len(str(row[index])) for row in rows if row[index] is not None)
    return total


@runtime_checkable
class Backend(Protocol):
    """What every adapter has, whatever its kind."""

    name: str
    kind: BackendKind

    async def start(self) -> None:
        """Open pools and sessions. Called once, before the first call."""

    async def close(self) -> None:
        """Release every resource. Called once, at shutdown; must not raise."""

    async def health(self) -> Health:
        """A cheap reachability check, bounded in time (used by /health/ready)."""


WorkerEvent = Literal["started", "out_of_memory", "stuck", "crashed"]
"""A worker process started, or killed past its memory cap, killed because an interrupted
query would not stop, or gone on its own."""
WORKER_EVENTS: tuple[WorkerEvent, ...] = ("started", "out_of_memory", "stuck", "crashed")


@runtime_checkable
class RunsWorkers(Protocol):
    """A backend whose work runs in child processes it restarts when they are lost."""

    def report_worker_events(self, report: Callable[[str, WorkerEvent], None]) -> None:
        """Have `report` called with the backend's name and each worker event."""


class LLMBackend(Backend, Protocol):
    async def chat(self, body: Mapping[str, Any] | bytes, ctx: CallContext) -> JSONResponse:
        """A non-streaming chat completion; `body` is the client's, with the model resolved."""

    def chat_stream(self, body: Mapping[str, Any], ctx: CallContext) -> AsyncIterator[list[bytes]]:
        """The data of the upstream's SSE events as they arrive: each item holds the
        complete events one network read brought (never empty), so a relay can pass
        them on in one write."""

    async def embeddings(
        self, body: Mapping[str, Any] | bytes, ctx: CallContext
    ) -> JSONResponse: ...

    async def models(self, ctx: CallContext) -> list[dict[str, Any]]: ...

    async def call_json(
        self,
        method: str,
        path: str,
        ctx: CallContext,
        *,
        body: Mapping[str, Any] | bytes | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> JSONResponse:
        """One JSON call to `path` under the API root (``/responses``, ``/completions``,
        ``/responses/{id}``, …); `path` and `params` come from Tollway, never raw from a
        client."""

    def event_stream(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        ctx: CallContext,
        *,
        method: str = "POST",
        params: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[list[bytes]]:
        """Like `chat_stream`, for any SSE answer (Responses, legacy completions)."""

    def relay(
        self,
        path: str,
        ctx: CallContext,
        *,
        body: bytes | AsyncIterator[bytes],
        content_type: str,
        content_length: int | None = None,
        accept: str | None = None,
        idle_timeout: bool = True,
    ) -> AsyncIterator[StreamHead | bytes]:
        """POST `body` (bytes, or chunks sent as they come) and yield the answer as it
        arrives: a `StreamHead` first, then the body's chunks. Raises before the head for
        an error status. Without `idle_timeout` only the caller's deadline bounds the wait
        (an upload, or an image that takes a minute to draw)."""


class SearchBackend(Backend, Protocol):
    async def search(self, body: Mapping[str, Any], ctx: CallContext) -> JSONResponse: ...

    async def extract(self, body: Mapping[str, Any], ctx: CallContext) -> JSONResponse: ...


class SQLBackend(Backend, Protocol):
    dialect: str
    """The sqlglot dialect name: ``postgres`` or ``duckdb``."""

    async def query(
        self,
        sql: str,
        params: Sequence[Any],
        ctx: CallContext,
        *,
        timeout_s: float,
        max_bytes: int | None = None,
    ) -> QueryResult:
        """Run one already-validated read-only statement with bound parameters; with
        `max_bytes`, stop fetching once the rows would take more (``too_large``)."""
