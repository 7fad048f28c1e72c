"""Rolling restarts behind the real nginx: does every request get its answer?

Three Tollway replicas (``python -m gateway serve``, sharing a SQLite state file) behind
nginx configured from the shipped ``nginx/nginx.conf`` (keep-alive to the replicas,
``proxy_next_upstream error timeout http_503``, no retry of a POST that may have reached a
replica). Clients send a mix of streaming and JSON chat POSTs and model lists through
nginx while each replica in turn gets SIGTERM, drains, and is started again. A run is
good when every request was answered 200 (every stream ending with ``[DONE]``); at the
end, the usage rows must equal the requests answered, one per request id.

The shipped relation is kept, scaled down for speed: nginx's upstream keep-alive (1 s
here, 4 s shipped) is shorter than Tollway's ``server.drain_idle_s`` (1.5 s here, 5 s by
default). nginx marks a replica that refused a connection down for ``fail_timeout`` (1 s
here, 10 s by default), even once it is back: the next replica is stopped only after that,
as a rolling update must wait (with all three marked down, nginx has no upstream left).

    python -m bench rolling [--runs 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from bench._procs import Server, start

__all__ = ["Cluster", "RunResult", "one_run", "run"]

ROOT = Path(__file__).resolve().parent.parent
KEY = "tw_rolling-0123456789abcdefghijklmnopqrst"
MODEL = "m"
NGINX_KEEPALIVE_S = 1
NGINX_FAIL_TIMEOUT_S = 1
DRAIN_IDLE_S = 1.5


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _upstream_chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        await asyncio.sleep(0.02)
        message = {"role": "assistant", "content": "hi"}
        answer = {
            "id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }  # fmt: skip
        return web.json_response(answer)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        for word in ("a", " streamed", " answer", " of", " a", " while"):
            await response.write(_chunk({"content": word}, None))
            await asyncio.sleep(0.08)
        await response.write(_chunk({}, "stop") + b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the gateway hung up (its client went away): nothing to finish
    return response


async def _upstream_models(request: web.Request) -> web.Response:
    return web.json_response({"data": []})


def upstream_app() -> web.Application:
    """A fake OpenAI: quick JSON answers, and streams of about half a second."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _upstream_chat)
    app.router.add_get("/v1/models", _upstream_models)
    return app


def nginx_binary() -> str | None:
    """Debian's nginx, if installed."""
    found = shutil.which("nginx")
    return found or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    crt, pem = folder / "tollway.crt", folder / "tollway.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def nginx_config(folder: Path, upstream_ports: list[int]) -> tuple[Path, int]:
    """The shipped nginx.conf on 127.0.0.1 in front of `upstream_ports`; its HTTPS port."""
    https = _free_port()
    crt, pem = _self_signed(folder)
    text = (ROOT / "nginx/nginx.conf").read_text()
    text = text.replace("pid /var/run/nginx.pid;", f"pid {folder / 'nginx.pid'};")
    text = text.replace("error_log /dev/stderr warn;", f"error_log {folder / 'error.log'} warn;")
    text = text.replace("access_log /dev/stdout;", "access_log off;")
    text = re.sub(r"listen (\[::\]:)?80;", "", text)
    text = text.replace("listen [::]:443 ssl http2;", "")
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;")
    servers = "\n        ".join(
        f"server 127.0.0.1:{port} fail_timeout={NGINX_FAIL_TIMEOUT_S}s;" for port in upstream_ports
    )
    text = text.replace("server tollway:8080;", servers)
    text = re.sub(
        r"(upstream tollway \{[^}]*keepalive_timeout )\d+s;", rf"\g<1>{NGINX_KEEPALIVE_S}s;", text
    )
    text = text.replace("/etc/nginx/certs/tollway.crt", str(crt))
    text = text.replace("/etc/nginx/certs/tollway.key", str(pem))
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = text.replace("http {", f"http {{\n    {temp}_temp_path {folder / temp};", 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path, https


class Replica:
    """One ``tollway serve`` process on a fixed port, started again after each stop."""

    def __init__(self, folder: Path, port: int, config: dict[str, Any]) -> None:
        self.port = port
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "tollway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with (self.folder / "log.jsonl").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
                cwd=self.folder, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/health/ready") as ready:
                    if ready.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"replica on {self.port} never became ready")

    async def stop(self) -> float:
        """SIGTERM; the seconds until the process exited."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        return time.monotonic() - started


@dataclass
class RunResult:
    requests: int = 0
    answered: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    drains_s: list[float] = field(default_factory=list)


class Cluster:
    """The upstream, three replicas and nginx, started once for any number of runs."""

    def __init__(self, folder: Path, *, replicas: int = 3) -> None:
        self.folder = folder
        self.state = folder / "state.db"
        self.ports = [_free_port() for _ in range(replicas)]
        self.upstream: Server | None = None
        self.nginx: asyncio.subprocess.Process | None = None
        self.replicas: list[Replica] = []
        self.https = 0

    async def __aenter__(self) -> Cluster:
        from gateway.config.keyhash import hash_key

        self.upstream = start(upstream_app)
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "shutdown_timeout_s": 10,
                       "drain_idle_s": DRAIN_IDLE_S, "log_level": "warning",
                       "replicas": len(self.ports)},
            "state": f"sqlite:///{self.state}",
            "state_spill_dir": str(self.folder / "spill"),
            "limits": {"default": ["1000000/minute"], "per_ip": ["1000000/minute"],
                       "per_ip_authenticated": ["1000000/minute"]},
            "backends": {"up": {"type": "openai", "base_url": self.upstream.url("/v1"),
                                "api_key": "sk-up", "retries": 0}},
            "models": {MODEL: {"backend": "up"}},
            "keys": [{"id": "k", "hash": hash_key(KEY), "tenant": "t", "scopes": ["llm"]}],
        }  # fmt: skip
        self.session = aiohttp.ClientSession()
        for index, port in enumerate(self.ports):
            replica = Replica(
                self.folder / f"replica{index}", port,
                {**config, "server": {**config["server"], "port": port}},
            )  # fmt: skip
            self.replicas.append(replica)
        await asyncio.gather(*(r.start(self.session) for r in self.replicas))
        nginx = nginx_binary()
        assert nginx is not None, "nginx is not installed"
        path, self.https = nginx_config(self.folder, self.ports)
        self.nginx = await asyncio.create_subprocess_exec(
            nginx, "-c", str(path), "-g", "daemon off;",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.https)) == 0:
                    break
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas if r.process is not None))
        if self.nginx is not None:
            self.nginx.terminate()
            await asyncio.wait_for(self.nginx.wait(), 10)
        await self.session.close()
        if self.upstream is not None:
            self.upstream.stop()

    def usage(self) -> tuple[int, int]:
        """(usage rows, distinct request ids): read once every replica has stopped."""
        with sqlite3.connect(self.state) as connection:
            row = connection.execute(
                "SELECT count(*), count(DISTINCT request_id) FROM tollway_usage"
            ).fetchone()
        return int(row[0]), int(row[1])


async def _client(https: int, stop: asyncio.Event, result: RunResult, index: int) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {KEY}"}
    base = f"https://127.0.0.1:{https}"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, limit=2)) as session:
        turn = index
        while not stop.is_set():
            turn += 1
            kind = ("stream", "json", "models")[turn % 3]
            result.requests += 1
            try:
                if kind == "models":
                    request = session.get(f"{base}/v1/models", headers=headers)
                else:
                    body = {**chat, "stream": kind == "stream"}
                    request = session.post(
                        f"{base}/v1/chat/completions", json=body, headers=headers
                    )
                async with request as response:
                    payload = await response.read()
                    if response.status != 200:
                        result.failures[f"{kind} {response.status}"] += 1
                    elif kind == "stream" and not payload.endswith(b"data: [DONE]\n\n"):
                        result.failures[f"{kind} cut"] += 1
                    else:
                        result.answered += 1
            except (aiohttp.ClientError, OSError) as exc:
                result.failures[f"{kind} {type(exc).__name__}"] += 1


async def one_run(cluster: Cluster, *, clients: int = 8) -> RunResult:
    """Traffic through nginx while each replica in turn is stopped and started again."""
    result = RunResult()
    stop = asyncio.Event()
    load = [asyncio.ensure_future(_client(cluster.https, stop, result, i)) for i in range(clients)]
    try:
        await asyncio.sleep(0.5)
        for replica in cluster.replicas:
            result.drains_s.append(await replica.stop())
            await replica.start(cluster.session)
            await asyncio.sleep(NGINX_FAIL_TIMEOUT_S + 0.3)  # nginx takes it back
    finally:
        stop.set()
        await asyncio.gather(*load)
    return result


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench rolling")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        print("nginx is not installed (apt-get install -y nginx)")
        return
    good = answered = 0
    with tempfile.TemporaryDirectory(prefix="tollway-rolling-") as folder:
        async with Cluster(Path(folder)) as cluster:
            for index in range(args.runs):
                result = await one_run(cluster, clients=args.clients)
                answered += result.answered
                good += not result.failures
                drains = ", ".join(f"{d:.1f}" for d in result.drains_s)
                print(
                    f"run {index + 1:2d}: {result.requests} requests, {result.answered} answered,"
                    f" failures {dict(result.failures) or 0}, drains (s) {drains}",
                    flush=True,
                )
        rows, distinct = cluster.usage()
    print(f"runs with every request answered: {good}/{args.runs}")
    print(f"usage rows {rows} (distinct request ids {distinct}) for {answered} answered requests")
