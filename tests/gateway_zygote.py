"""A process that has imported Tollway once and forks a gateway process per request.

Importing Tollway costs about a second of CPU; a test that starts twenty gateways (each
stopped with SIGTERM, so each is a process of its own) would spend most of its time
there. The zygote pays it once: each gateway is a fork of it that runs
``tollway serve --config FILE``, a real process with its own pid, signals and exit.

Lines on stdin: ``start CONFIG CWD LOG``. Lines on stdout: ``pid PID`` for each start,
``exit PID CODE`` when a gateway has exited.
"""

from __future__ import annotations

import os
import sys
import threading


def _child(config: str, cwd: str, log: str) -> None:
    os.chdir(cwd)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)
    os.dup2(log_fd, 2)
    from gateway.cli import main

    code = 1
    try:
        code = main(["serve", "--config", config])
    finally:
        os._exit(code)


def _reap(out_lock: threading.Lock) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            threading.Event().wait(0.05)
            continue
        with out_lock:
            print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


def main() -> None:
    import gateway.app  # noqa: F401 - what every fork would otherwise import again
    import gateway.cli  # noqa: F401
    import gateway.serve  # noqa: F401

    out_lock = threading.Lock()
    reaper: threading.Thread | None = None
    for line in sys.stdin:
        command, *args = line.split()
        if command != "start":
            continue
        pid = os.fork()
        if pid == 0:
            _child(*args)
        with out_lock:
            print(f"pid {pid}", flush=True)
        if reaper is None:  # started after the first fork: a forked child has no threads
            reaper = threading.Thread(target=_reap, args=(out_lock,), daemon=True)
            reaper.start()


if __name__ == "__main__":
    main()
