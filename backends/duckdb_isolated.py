"""DuckDB in a child process: the gateway's memory stays the gateway's.

DuckDB's allocator grows in whichever process runs it; here that is a worker
(`backends.duckdb_worker`), so the gateway never loads DuckDB. Seen from the gateway the
backend behaves as the in-process one: the same results, the same errors, a query
interrupted in the worker when it runs out of time or its caller goes away.

The worker is watched. Its resident memory is read every `poll_s`; past
``worker_memory_mb`` it is killed and the queries it was running answer
`BackendOutOfMemory`. A worker that dies answers its queries `BackendCrashed`. A query
that has not stopped `cancel_grace_s` after its interrupt gets its worker killed. In each
case the next query starts a new worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from backends.base import (
    BackendKind,
    CallContext,
    Column,
    Health,
    QueryResult,
    WorkerEvent,
    sql_health,
)
from backends.duckdb_failures import Failure, error_of
from backends.duckdb_frames import FrameError, decode
from backends.duckdb_process import (
    Worker,
    WorkerSettings,
    WorkerStartFailed,
    remove_stale_spills,
)
from gateway.errors import (
    BackendCrashed,
    BackendOutOfMemory,
    BackendTimeout,
    BackendUnavailable,
    TollwayError,
)

__all__ = ["IsolatedDuckDBBackend"]

_log = logging.getLogger("tollway.backends.duckdb")

_DECODE_AWAY_FROM_LOOP: Final = 1 << 20
"""Answers bigger than this (bytes) are unpickled on a thread, not on the event loop."""

_KillReason = Literal["out_of_memory", "stuck", "closing"]


@dataclass(eq=False)
class _Session:
    """One worker's life: the queries it owes an answer, and why it was killed, if it was."""

    worker: Worker
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    killed_for: _KillReason | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: bool = False


class IsolatedDuckDBBackend:
    kind: BackendKind = "sql"
    dialect = "duckdb"

    def __init__(
        self,
        name: str,
        settings: WorkerSettings,
        *,
        memory_cap_mb: int,
        cancel_grace_s: float,
        poll_s: float = 0.5,
    ) -> None:
        self.name = name
        self.settings = settings
        self.memory_cap_mb = memory_cap_mb
        self.cancel_grace_s = cancel_grace_s
        self.poll_s = poll_s
        self._session: _Session | None = None
        self._starting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._open = False
        self._report: Callable[[str, WorkerEvent], None] | None = None

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id, if one runs."""
        return None if self._session is None else self._session.worker.pid

    def report_worker_events(self, report: Callable[[str, WorkerEvent], None]) -> None:
        self._report = report

    def _tell(self, event: WorkerEvent) -> None:
        if self._report is not None:
            self._report(self.name, event)

    def worker_rss_bytes(self) -> int | None:
        """The running worker's resident memory, if one runs."""
        return None if self._session is None else self._session.worker.rss_bytes()

    async def start(self) -> None:
        self._open = True
        removed = await asyncio.to_thread(remove_stale_spills)
        if removed:
            _log.info(
                "removed the spill directories of dead DuckDB workers",
                extra={"backend": self.name, "directories": removed},
            )
        await self._current()

    async def close(self) -> None:
        self._open = False
        session, self._session = self._session, None
        if session is None:
            return
        session.killed_for = "closing"
        await session.worker.stop()
        await asyncio.gather(*session.tasks, return_exceptions=True)

    async def health(self) -> Health:
        return await sql_health(self)

    async def query(
        self,
        sql: str,
        params: Sequence[Any],
        ctx: CallContext,
        *,
        timeout_s: float,
        max_bytes: int | None = None,
    ) -> QueryResult:
        query_id = next(self._ids)
        try:
            async with asyncio.timeout(timeout_s):
                session = await self._current()
                answer = asyncio.get_running_loop().create_future()
                session.pending[query_id] = answer
                session.worker.send(query_id, ("query", sql, list(params), max_bytes))
                body = await answer
        except TimeoutError:
            self._abandon(query_id)
            raise BackendTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped", backend=self.name
            ) from None
        except asyncio.CancelledError:
            self._abandon(query_id)  # the caller is gone: stop the work it asked for
            raise
        if body[0] == "failure":
            raise error_of(Failure(*body[1:]), sql, self.name)
        _, columns, rows, truncated, too_large = body
        return QueryResult([Column(*c) for c in columns], rows, truncated, too_large)

    async def _current(self) -> _Session:
        """The running worker's session, starting a worker if none runs."""
        if not self._open:
            raise BackendUnavailable(f"backend {self.name!r} is not started", backend=self.name)
        session = self._session
        if session is not None and not session.ended:
            return session
        async with self._starting:
            session = self._session
            if session is not None and not session.ended:
                return session
            try:
                worker = await Worker.start(self.settings)
            except WorkerStartFailed as exc:
                raise BackendUnavailable(
                    f"backend {self.name!r}: the DuckDB worker {exc}", backend=self.name
                ) from None
            if not self._open:  # closed while the worker started
                await worker.stop()
                raise BackendUnavailable(f"backend {self.name!r} is closed", backend=self.name)
            session = _Session(worker)
            # held by the session until it ends (backends cannot use gateway.ops.tasks)
            session.tasks = [
                asyncio.create_task(self._read(session), name=f"duckdb-{self.name}-read"),  # noqa: TID251
                asyncio.create_task(self._watch(session), name=f"duckdb-{self.name}-watch"),  # noqa: TID251
            ]
            self._session = session
            _log.info("duckdb worker started", extra={"backend": self.name, "pid": worker.pid})
            self._tell("started")
            return session

    def _abandon(self, query_id: int) -> None:
        """Interrupt a query nobody waits for; kill its worker if it has not stopped
        `cancel_grace_s` later."""
        session = self._session
        if session is None or query_id not in session.pending:
            return
        session.worker.send(query_id, ("interrupt",))
        loop = asyncio.get_running_loop()
        loop.call_later(self.cancel_grace_s, self._kill_if_still_running, session, query_id)

    def _kill_if_still_running(self, session: _Session, query_id: int) -> None:
        if session.ended or query_id not in session.pending:
            return
        _log.warning(
            "duckdb worker killed: an interrupted query did not stop",
            extra={"backend": self.name, "pid": session.worker.pid, "grace_s": self.cancel_grace_s},
        )
        session.killed_for = "stuck"
        session.worker.kill()

    async def _read(self, session: _Session) -> None:
        """Hand each answer to the query waiting for it, until the worker goes."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                query_id, payload = await session.worker.read()
                answer = session.pending.pop(query_id, None)
                if answer is None or answer.done():
                    continue  # its caller has gone
                try:
                    if len(payload) > _DECODE_AWAY_FROM_LOOP:
                        body = await loop.run_in_executor(None, decode, payload)
                    else:
                        body = decode(payload)
                except FrameError as exc:
                    body = ("failure", "failed", type(exc).__name__, "")
                if not answer.done():
                    answer.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await self._end(session)

    async def _watch(self, session: _Session) -> None:
        """Kill the worker once its resident memory passes the cap."""
        cap = self.memory_cap_mb * 1024 * 1024
        while not session.ended:
            await asyncio.sleep(self.poll_s)
            rss = session.worker.rss_bytes()
            if rss is None or session.ended:
                return
            if rss > cap:
                _log.warning(
                    "duckdb worker killed: out of memory",
                    extra={
                        "backend": self.name,
                        "pid": session.worker.pid,
                        "rss_mb": rss // (1024 * 1024),
                        "cap_mb": self.memory_cap_mb,
                    },
                )
                session.killed_for = "out_of_memory"
                session.worker.kill()
                return

    async def _end(self, session: _Session) -> None:
        """The worker has gone: reap it, and answer every query it owed."""
        session.ended = True
        if self._session is session:
            self._session = None
        await session.worker.stop()
        code = session.worker.process.returncode
        if session.killed_for is None:
            _log.warning(
                "duckdb worker stopped on its own; the next query starts another",
                extra={"backend": self.name, "pid": session.worker.pid, "returncode": code},
            )
            self._tell("crashed")
        elif session.killed_for != "closing":
            self._tell(session.killed_for)
        for answer in session.pending.values():
            if not answer.done():
                answer.set_exception(self._lost(session.killed_for))
        session.pending.clear()

    def _lost(self, reason: _KillReason | None) -> TollwayError:
        if reason == "out_of_memory":
            return BackendOutOfMemory(
                f"backend {self.name!r} needed more than its {self.memory_cap_mb} MB for the "
                "queries it was running; they were stopped",
                backend=self.name,
            )
        if reason == "closing":
            return BackendUnavailable(f"backend {self.name!r} is closing", backend=self.name)
        return BackendCrashed(
            f"backend {self.name!r}: the DuckDB worker stopped before answering",
            backend=self.name,
        )
