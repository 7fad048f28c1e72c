"""``tollway serve --workers N``: N processes on one port, one set of metrics.

The parent starts N copies of ``tollway serve`` that bind the same port with
SO_REUSEPORT (the kernel spreads connections over them) and share a Prometheus
multiprocess directory, so ``/metrics`` from any worker counts the requests of all. On
SIGTERM or SIGINT the parent passes the signal on, waits for every worker to drain and
exit, and removes the directory.

Limits, caches and the key table live in each worker: configure ``redis:`` so limits
hold across workers (they are per worker otherwise, which a warning says at start).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from types import FrameType

__all__ = ["WORKER_INDEX_ENV", "run_workers"]

WORKER_INDEX_ENV = "TOLLWAY_WORKER_INDEX"


def run_workers(config_path: str | None, workers: int, demo_key: str | None) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="tollway-metrics-")
    command = [sys.executable, "-m", "gateway", "serve"]
    if config_path:
        command += ["--config", config_path]
    children: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "TOLLWAY_WORKERS": str(workers),
            WORKER_INDEX_ENV: str(index),
        }
        if demo_key:
            env["TOLLWAY_DEMO_KEY"] = demo_key  # one demo key for every worker
        children.append(subprocess.Popen(command, env=env))

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        codes = [child.wait() for child in children]
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # A worker killed by a signal has a negative code: the parent fails for it too.
    return max((code if code >= 0 else 128 - code for code in codes), default=0)
