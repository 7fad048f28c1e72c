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


def test_two_workers_share_the_port_and_their_metrics(tmp_path: Path) -> None:
    port = _free_port()
    data = base_config_data()
    data["server"]["port"] = port
    data["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    config = tmp_path / "tollway.yaml"
    config.write_text(yaml.safe_dump(data))
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/health/live")
                break
            except OSError:
                assert time.monotonic() < deadline, "never came up"
                time.sleep(0.05)
        time.sleep(0.5)  # let the second worker finish starting too
        workers = subprocess.run(
            ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True
        ).stdout.split()
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
