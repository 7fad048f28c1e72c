"""Tollway as its operators run it: ``python -m gateway serve`` in its own process, on a
port of its own and a SQLite state file of its own, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import base_config_data, merge
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["GatewayProcess", "Zygote"]


class Zygote:
    """`tests.gateway_zygote` driven from the test's loop: gateways forked on demand."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pids: asyncio.Queue[int] = asyncio.Queue()
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Zygote:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.gateway_zygote", cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        for pid, exited in self._exits.items():
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 5)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()

    def _exit_of(self, pid: int) -> asyncio.Future[int]:
        if pid not in self._exits:
            self._exits[pid] = asyncio.get_running_loop().create_future()
        return self._exits[pid]

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            kind, *values = line.decode().split()
            if kind == "pid":
                await self._pids.put(int(values[0]))
            elif kind == "exit":
                exited = self._exit_of(int(values[0]))
                if not exited.done():
                    exited.set_result(int(values[1]))

    async def spawn(self, config: Path, cwd: Path, log: Path) -> int:
        assert self._process is not None and self._process.stdin is not None
        async with self._lock:
            self._process.stdin.write(f"start {config} {cwd} {log}\n".encode())
            await self._process.stdin.drain()
            pid = await asyncio.wait_for(self._pids.get(), 10)
        self._exit_of(pid)
        return pid

    async def wait(self, pid: int) -> int:
        return await asyncio.shield(self._exit_of(pid))


class GatewayProcess:
    """One gateway process; `config` is laid over the tests' base config. Started with
    ``python -m gateway serve``, or forked by `zygote` when given (the same command, a
    second faster)."""

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        *,
        port: int | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.state_path = folder / "state.db"
        self.log_path = folder / "log.jsonl"
        self.zygote = zygote
        data = merge(
            base_config_data(),
            {
                "server": {"host": "127.0.0.1", "port": self.port},
                "state": f"sqlite:///{self.state_path}",
                "state_spill_dir": str(folder / "spill"),
                "limits": {"default": ["100000/minute"], "per_ip": ["100000/minute"]},
            },
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "tollway.yaml"
        self.config_path.write_text(yaml.safe_dump(merge(data, config)))
        self.pid: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self.stopped_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession, ready_within_s: float = 20) -> None:
        if self.zygote is not None:
            self.pid = await self.zygote.spawn(self.config_path, self.folder, self.log_path)
            self._exited = asyncio.ensure_future(self.zygote.wait(self.pid))
        else:
            with self.log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
                    cwd=self.folder, env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=asyncio.subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
            self.pid = process.pid
            self._exited = asyncio.ensure_future(process.wait())
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self._exited.done():
                raise AssertionError(f"the gateway exited at start: {self.log()[-2000:]}")
            try:
                async with session.get(f"{self.url}/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("the gateway never became ready")

    def terminate(self) -> None:
        assert self.pid is not None
        self.stopped_at = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)

    async def wait(self, within_s: float) -> tuple[int, float]:
        """The exit code and the seconds from SIGTERM to exit; kills after `within_s`."""
        assert self._exited is not None and self.stopped_at is not None
        try:
            code = await asyncio.wait_for(asyncio.shield(self._exited), within_s)
        except TimeoutError:
            self.kill()
            raise AssertionError(f"the gateway did not exit within {within_s}s") from None
        return code, time.monotonic() - self.stopped_at

    def kill(self) -> None:
        if self.pid is not None and self._exited is not None and not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def usage_rows(self, columns: str = "request_id, status, outcome, tokens_out") -> list[Any]:
        with sqlite3.connect(self.state_path) as connection:
            return connection.execute(f"SELECT {columns} FROM tollway_usage").fetchall()
