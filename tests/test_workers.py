"""`tollway serve --workers 2`: one port, two processes, metrics summed, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import base_config_data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # a new connection each time
        return bytes(response.read())


def _start_two_workers(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, int]:
    port = _free_port()
    data = base_config_data()
    data["server"]["port"] = port
    data["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    config = tmp_path / "tollway.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "stderr.log"
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    return parent, log, port


def _wait_for_both(parent: subprocess.Popen[str], log: Path) -> list[str]:
    """Both workers serving (one still starting would die of a SIGTERM before it could
    print or drain); their pids."""
    deadline = time.monotonic() + 30
    while log.read_text().count('"message":"listening"') < 2:
        assert time.monotonic() < deadline, "the workers never came up"
        time.sleep(0.05)
    return subprocess.run(
        ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True
    ).stdout.split()


def test_two_workers_share_the_port_and_their_metrics(tmp_path: Path) -> None:
    parent, log, port = _start_two_workers(tmp_path)
    try:
        workers = _wait_for_both(parent, log)
        assert len(workers) == 2
        for _ in range(20):
            _get(f"http://127.0.0.1:{port}/openapi.json")
        scraped = [_get(f"http://127.0.0.1:{port}/metrics").decode() for _ in range(4)]
        line = 'tollway_requests_total{method="GET",route="/openapi.json",status="200"} 20.0'
        assert all(line in text for text in scraped)  # whichever worker answers, all 20
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=20)
        assert parent.returncode == 0
        assert output.count("listening on") == 1
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_worker_killed_by_a_signal_fails_the_parent(tmp_path: Path) -> None:
    parent, log, _port = _start_two_workers(tmp_path)
    try:
        workers = _wait_for_both(parent, log)
        os.kill(int(workers[1]), signal.SIGKILL)
        time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=20)
        assert parent.returncode == 128 + signal.SIGKILL
    finally:
        if parent.poll() is None:
            parent.kill()
