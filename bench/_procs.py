"""Servers for benchmarks, each in its own process on 127.0.0.1, optionally on one core."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from aiohttp import web

__all__ = ["Server", "children", "cpu_seconds", "rss_mb", "start"]

AppFactory = Callable[..., web.Application]


class Server:
    def __init__(self, process: BaseProcess, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def _serve(
    factory: AppFactory, args: tuple[Any, ...], cpus: set[int] | None, conn: Connection
) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    app = factory(*args)
    conn.send(sock.getsockname()[1])
    web.run_app(app, sock=sock, print=None, access_log=None, loop=uvloop.new_event_loop())


def start(factory: AppFactory, *args: Any, cpus: set[int] | None = None) -> Server:
    """Serve `factory(*args)` in a new process (uvloop), pinned to `cpus` when given."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(factory, args, cpus, child), daemon=True)
    process.start()
    return Server(process, parent.recv())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a gateway's DuckDB worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(entry))
    return found
