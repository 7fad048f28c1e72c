"""One DuckDB worker process: started, spoken to, measured, stopped.

`Worker.start` runs ``python -m backends.duckdb_worker`` with one end of a socket pair,
sends it its settings and waits for it to open its database. The worker dies with the
gateway (``PR_SET_PDEATHSIG``) and when its socket closes; `stop` closes the socket, waits
for the exit and kills what does not leave, so no child outlives a backend and none is
left unreaped. Each worker spills to a directory of its own, removed once it has exited:
a worker killed mid-query leaves no spill files behind. A worker holds a lock on a file in
its directory for its whole life, so the directories of workers that died with their
gateway (``kill -9``, the kernel's OOM killer), which nobody was left to remove, are found
and removed by the next gateway to start a worker there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from backends.duckdb_frames import FrameError, decode, encode, read_frame

__all__ = ["OWNER_LOCK", "Worker", "WorkerSettings", "WorkerStartFailed", "remove_stale_spills"]

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_START_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 2.0
_SPILL_PREFIX: Final = "tollway-duckdb-"
OWNER_LOCK: Final = ".owner"
"""The file in a spill directory its worker holds an exclusive `flock` on while it lives."""
_UNCLAIMED_GRACE_S: Final = 2 * _START_TIMEOUT_S
"""A directory with no lock file yet may belong to a worker still starting."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the worker opens its database (see `backends.duckdb` for the options)."""

    path: str
    threads: int
    query_threads: int
    memory_limit: str | None
    demo: bool


def remove_stale_spills(directory: str | None = None) -> list[str]:
    """Remove the spill directories under `directory` (the system's temporary one) whose
    worker has died without its gateway removing them; the paths removed."""
    removed: list[str] = []
    now = time.time()
    for spill in Path(directory or tempfile.gettempdir()).glob(_SPILL_PREFIX + "*"):
        try:
            fd = os.open(spill / OWNER_LOCK, os.O_RDONLY)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if spill.is_dir() and now - spill.stat().st_mtime > _UNCLAIMED_GRACE_S:
                    shutil.rmtree(spill, ignore_errors=True)
                    removed.append(str(spill))
            continue
        except OSError:
            continue  # another user's, or not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its worker is alive
        finally:
            os.close(fd)
        shutil.rmtree(spill, ignore_errors=True)
        removed.append(str(spill))
    return removed


class WorkerStartFailed(Exception):
    """The worker did not start or could not open its database; the message says why."""


class Worker:
    """A running worker: frames go out with `send` and come back from `read`."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        spill: str,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.spill = spill
        self._reader = reader
        self._writer = writer

    @classmethod
    async def start(cls, settings: WorkerSettings) -> Worker:
        ours, theirs = socket.socketpair()
        spill = tempfile.mkdtemp(prefix=_SPILL_PREFIX)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "backends.duckdb_worker",
                str(theirs.fileno()),
                str(os.getpid()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            shutil.rmtree(spill, ignore_errors=True)
            raise WorkerStartFailed(f"could not start: {type(exc).__name__}") from None
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            process.kill()
            raise
        worker = cls(process, reader, writer, spill)
        worker.send(0, ("open", {**asdict(settings), "temp_directory": spill}))
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                _, payload = await read_frame(reader)
            answer = decode(payload)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, FrameError):
            await worker.stop()
            raise WorkerStartFailed("the worker did not start") from None
        except BaseException:  # cancelled while it started: it must not outlive us
            worker.kill()
            writer.close()
            raise
        if answer[0] != "ready":
            await worker.stop()
            raise WorkerStartFailed(f"could not open its database: {answer[1]}")
        return worker

    def send(self, query_id: int, body: Any) -> None:
        """Queue a frame; a worker that has gone drops it (its reader sees the end)."""
        if not self._writer.is_closing():
            self._writer.writelines(encode(query_id, body))

    async def read(self) -> tuple[int, bytes]:
        """The next frame's query id and body; `asyncio.IncompleteReadError` or
        `ConnectionError` once the worker has gone."""
        return await read_frame(self._reader)

    def rss_bytes(self) -> int | None:
        """The worker's resident memory, or None once it has gone."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL, at once (no-op once it has exited)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        """Close the socket, let the worker leave, kill it if it does not; always reaped."""
        self._writer.close()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
        shutil.rmtree(self.spill, ignore_errors=True)
