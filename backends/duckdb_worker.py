"""The DuckDB worker: a child process that holds one database and runs a gateway's queries.

Started by `backends.duckdb_process` as ``python -m backends.duckdb_worker FD PARENT_PID``
with one end of a socket pair as FD. It dies with its parent (``PR_SET_PDEATHSIG`` on
Linux, and in any case when the socket closes), opens its database with the same lockdown
as the in-process backend (`backends.duckdb_engine`), answers ``ready``, then runs each
query on its own thread, one cursor each, answering in whatever order they finish.
An ``interrupt`` frame stops the query it names. It never writes to stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb

from backends.duckdb_engine import failure_of, open_database, run
from backends.duckdb_frames import FrameError, decode, encode, recv_frame
from backends.duckdb_process import OWNER_LOCK

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the gateway, which stops us
    sock = socket.socket(fileno=fd)
    first = recv_frame(sock)
    if first is None:
        return 0
    settings: dict[str, Any] = decode(first[1])[1]
    _claim(settings["temp_directory"])
    try:
        connection = open_database(
            settings["path"],
            query_threads=settings["query_threads"],
            memory_limit=settings["memory_limit"],
            demo=settings["demo"],
            temp_directory=settings["temp_directory"],
        )
    except duckdb.Error as exc:
        sock.sendall(b"".join(encode(0, ("open_failed", type(exc).__name__))))
        return 1
    _Server(connection, sock, settings["threads"]).serve()
    return 0


def _claim(spill: str) -> None:
    """Hold the lock that says this spill directory is in use until the process ends
    (the kernel lets go of it however the process dies)."""
    fd = os.open(os.path.join(spill, OWNER_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the gateway dies (Linux); the socket's end
    stops it elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)


class _Server:
    def __init__(self, connection: duckdb.DuckDBPyConnection, sock: socket.socket, threads: int):
        self._connection = connection
        self._sock = sock
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="duckdb-query")
        self._send_lock = threading.Lock()
        self._cursors: dict[int, duckdb.DuckDBPyConnection] = {}
        self._interrupted: set[int] = set()
        self._lock = threading.Lock()

    def serve(self) -> None:
        self._send(0, ("ready", os.getpid()))
        while (frame := recv_frame(self._sock)) is not None:
            query_id, payload = frame
            try:
                body = decode(payload)
            except FrameError:
                self._send(query_id, ("failure", "failed", "FrameError", ""))
                continue
            if body[0] == "query":
                cursor = self._connection.cursor()
                with self._lock:
                    self._cursors[query_id] = cursor
                self._executor.submit(self._run, query_id, cursor, *body[1:])
            elif body[0] == "interrupt":
                with self._lock:
                    running = self._cursors.get(query_id)
                    if running is not None:
                        self._interrupted.add(query_id)
                if running is not None:
                    running.interrupt()
        self._stop()

    def _run(
        self,
        query_id: int,
        cursor: duckdb.DuckDBPyConnection,
        sql: str,
        params: list[Any],
        max_bytes: int | None,
    ) -> None:
        try:
            with self._lock:
                stopped = query_id in self._interrupted
            if stopped:
                answer: tuple[Any, ...] = ("failure", "interrupted", "InterruptException", "")
            else:
                result = run(cursor, sql, params, max_bytes)
                columns = [(c.name, c.type) for c in result.columns]
                answer = ("rows", columns, result.rows, result.truncated, result.too_large)
        except duckdb.Error as exc:
            answer = ("failure", *failure_of(exc))
        except Exception as exc:  # noqa: BLE001 - the gateway must hear of any failure
            answer = ("failure", "failed", type(exc).__name__, "")
        finally:
            with self._lock:
                self._cursors.pop(query_id, None)
                self._interrupted.discard(query_id)
            cursor.close()
        try:
            pieces = encode(query_id, answer)
        except Exception as exc:  # noqa: BLE001 - a value pickle cannot write
            pieces = encode(query_id, ("failure", "failed", type(exc).__name__, ""))
        self._write(pieces)

    def _send(self, query_id: int, body: Any) -> None:
        self._write(encode(query_id, body))

    def _write(self, pieces: list[bytes]) -> None:
        try:
            with self._send_lock:
                for piece in pieces:
                    self._sock.sendall(piece)
        except OSError:  # the gateway is gone
            os._exit(0)

    def _stop(self) -> None:
        """The gateway closed its end: stop every query and leave."""
        self._connection.interrupt()
        with self._lock:
            for cursor in self._cursors.values():
                cursor.interrupt()
        self._executor.shutdown(wait=False, cancel_futures=True)
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
