"""The deployment files, checked here where Docker does not run: the Compose file against
the files and config it names, the real Nginx in front of a real Tollway, and the real
Prometheus evaluating every expression of the shipped Grafana dashboard."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.config import load_config
from gateway.routing import RouteSpec, route_specs_key
from tests.conftest import USER_KEY, make_config, skip_or_fail
from tests.fake_providers import UPSTREAM_KEY, FakeProvider
from tests.services import REDIS_URL, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ENV_EXAMPLE = dict(
    line.split("=", 1)
    for line in (ROOT / ".env.example").read_text().splitlines()
    if line and not line.startswith("#")
)


# --- Compose, Dockerfile and config agree ------------------------------------------------


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = COMPOSE["services"]
    assert set(services) == {
        "tollway",
        "nginx",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
        "alertmanager",
        "backup",
    }
    for name, service in services.items():
        if service.get("profiles") == ["backup"]:  # a one-off job, run on demand
            assert service["command"][:2] == ["state", "backup"]
        else:
            assert "test" in service["healthcheck"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition == {"condition": "service_healthy"}, name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    assert "--appendonly" in services["redis"]["command"]


def test_every_mounted_file_exists_and_no_secret_is_written_in_compose() -> None:
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
    text = (ROOT / "docker-compose.yml").read_text()
    for variable in set(re.findall(r"\$\{([A-Z_]+)", text)):
        assert variable in ENV_EXAMPLE, f"{variable} is not in .env.example"
    assert not re.search(r"(?i)(password|api_key|secret)\s*:\s*['\"]?[A-Za-z0-9]{6,}", text)


def test_the_compose_config_is_a_valid_tollway_config_that_agrees_with_nginx() -> None:
    env = {**ENV_EXAMPLE, "OPENAI_API_KEY": "sk-x", "GROQ_API_KEY": "gsk-x", "TAVILY_API_KEY": "t"}
    config = load_config(str(ROOT / "deploy/tollway/tollway.yaml"), env=env)
    nginx = (ROOT / "nginx/nginx.conf").read_text()
    size = re.search(r"client_max_body_size (\d+)m;", nginx)
    assert size and int(size.group(1)) * 1024 * 1024 == config.server.max_body_bytes
    assert f"server tollway:{config.server.port};" in nginx
    subnet = COMPOSE["networks"]["tollway"]["ipam"]["config"][0]["subnet"]
    assert subnet in config.server.trusted_proxies
    assert config.redis == "redis://redis:6379/0" and config.state.startswith("postgresql://")
    grace = int(COMPOSE["services"]["tollway"]["stop_grace_period"].rstrip("s"))
    assert grace >= config.server.shutdown_timeout_s + 2  # the drain, then the exit


def test_nginx_closes_idle_upstream_connections_before_a_draining_tollway_would() -> None:
    """What the load balancer must be told for a drain without resets: its upstream
    keep-alive is shorter than Tollway's drain_idle_s (and keepalive_timeout_s), and it
    retries refused connections and 503s elsewhere, never a POST that may have arrived."""
    config = load_config(str(ROOT / "deploy/tollway/tollway.yaml"), env=ENV_EXAMPLE)
    nginx = (ROOT / "nginx/nginx.conf").read_text()
    upstream = re.search(r"upstream tollway \{(.*?)\}", nginx, re.S)
    assert upstream is not None
    keepalive = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert keepalive is not None
    assert int(keepalive.group(1)) < config.server.drain_idle_s < config.server.keepalive_timeout_s
    retry = re.findall(r"^\s*proxy_next_upstream ([^;]*);", nginx, re.M)
    assert retry == ["error timeout http_503"]  # no non_idempotent: a POST is never resent


def test_the_compose_environment_of_tollway_reaches_its_config() -> None:
    from gateway.config.load import _OVERRIDES

    environment = COMPOSE["services"]["tollway"]["environment"]
    for name in environment:
        if name.startswith("TOLLWAY_") and name not in ("TOLLWAY_CONFIG", "TOLLWAY_SECRET_KEY"):
            assert name in _OVERRIDES or name == "TOLLWAY_ADMIN_KEY_HASH", name
    env = {**ENV_EXAMPLE, "TOLLWAY_WORKERS": "3", "TOLLWAY_REPLICAS": "4"}
    config = load_config(str(ROOT / "deploy/tollway/tollway.yaml"), env=env)
    assert config.server.workers == 3


def test_the_image_runs_as_a_user_and_checks_a_real_probe() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert dockerfile.count("FROM ") == 2  # build stage, then a clean runtime stage
    paths = {r.resource.canonical for r in create_app(make_config()).router.routes() if r.resource}
    for probe in re.findall(r"127\.0\.0\.1:8080(/[a-z/]+)", dockerfile + str(COMPOSE)):
        assert probe in paths


# --- the real Nginx -------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
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
        )  # fmt: skip
    )
    return crt, pem


def nginx_config(folder: Path, upstream_port: int) -> tuple[Path, int, int]:
    http, https = free_port(), free_port()
    crt, pem = self_signed(folder)
    text = (ROOT / "nginx/nginx.conf").read_text()
    text = text.replace("pid /var/run/nginx.pid;", f"pid {folder / 'nginx.pid'};")
    text = text.replace("listen [::]:80;", "").replace("listen [::]:443 ssl http2;", "")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http};")
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;")
    text = text.replace("server tollway:8080;", f"server 127.0.0.1:{upstream_port};")
    text = text.replace("/etc/nginx/certs/tollway.crt", str(crt))
    text = text.replace("/etc/nginx/certs/tollway.key", str(pem))
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = text.replace("http {", f"http {{\n    {temp}_temp_path {folder / temp};", 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path, http, https


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        skip_or_fail("nginx (Debian package nginx) is not installed")
    return str(found)


def test_nginx_accepts_the_shipped_config(nginx_binary: str, tmp_path: Path) -> None:
    path, _, _ = nginx_config(tmp_path, 8080)
    done = subprocess.run([nginx_binary, "-t", "-c", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def sse(request: web.Request) -> web.StreamResponse:
    """A slow upstream completions stream: 20 pieces 50 ms apart, a finish, ``[DONE]``."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    for index in range(21):
        finish = '"stop"' if index == 20 else "null"
        choice = f'{{"text": "{index}", "index": 0, "finish_reason": {finish}}}'
        await response.write(f'data: {{"choices": [{choice}]}}\n\n'.encode())
        await asyncio.sleep(0.05)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def seen_by_tollway(request: web.Request) -> web.Response:
    """What Tollway believes about the caller once Nginx has forwarded the request."""
    from gateway.edge.client_ip import request_ip

    return web.json_response(
        {"ip": request_ip(request), "proto": request.headers.get("X-Forwarded-Proto")}
    )


async def test_https_redirect_sse_and_body_limit_through_real_nginx(
    nginx_binary: str, aiohttp_server: Any, tmp_path: Path
) -> None:
    upstream = web.Application()
    upstream.router.add_post("/v1/completions", sse)
    slow = await aiohttp_server(upstream)
    app = create_app(make_config({
        "server": {"trusted_proxies": ["127.0.0.1"]},
        "backends": {"up": {"type": "openai", "base_url": str(slow.make_url("/v1"))}},
        "models": {"m": {"backend": "up"}},
    }))  # fmt: skip
    seen = app.router.add_get("/v1/seen", seen_by_tollway)
    app[route_specs_key][seen] = RouteSpec("chat", "llm")
    tollway = await aiohttp_server(app)
    path, http, https = nginx_config(tmp_path, tollway.port)
    process = await asyncio.to_thread(
        subprocess.Popen,
        [nginx_binary, "-c", str(path), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", https)) == 0:
                    break
            await asyncio.sleep(0.05)
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
            live = await session.get(f"https://127.0.0.1:{https}/health/live")
            assert live.status == 200
            assert live.headers["Strict-Transport-Security"].startswith("max-age=")
            assert live.headers["X-Request-ID"]
            kept = await session.get(
                f"https://127.0.0.1:{https}/health/live", headers={"X-Request-ID": "abc-123"}
            )
            assert kept.headers["X-Request-ID"] == "abc-123"
            # Nginx appends its peer (127.0.0.1, a trusted proxy) to X-Forwarded-For, so
            # Tollway takes the hop before it as the caller, and learns the scheme was https.
            seen = await session.get(
                f"https://127.0.0.1:{https}/v1/seen",
                headers={"Authorization": f"Bearer {USER_KEY}", "X-Forwarded-For": "203.0.113.9"},
            )
            assert await seen.json() == {"ip": "203.0.113.9", "proto": "https"}
            redirect = await session.get(
                f"http://127.0.0.1:{http}/v1/models", allow_redirects=False
            )
            assert redirect.status == 301 and redirect.headers["Location"].startswith("https://")
            started = time.monotonic()
            stream = await session.post(
                f"https://127.0.0.1:{https}/v1/completions",
                json={"model": "m", "prompt": "x", "stream": True},
                headers={"Authorization": f"Bearer {USER_KEY}"},
            )  # fmt: skip
            assert stream.status == 200, await stream.text()
            arrivals = []
            async for line in stream.content:
                if line.startswith(b"data: "):
                    arrivals.append(time.monotonic() - started)
            assert len(arrivals) == 22  # 21 pieces and [DONE]
            assert arrivals[-1] - arrivals[0] > 0.5  # chunk by chunk, not one buffered lump
            too_big = await session.post(
                f"https://127.0.0.1:{https}/v1/embeddings", data=b"x" * (17 * 1024 * 1024),
                headers={"Authorization": f"Bearer {USER_KEY}"},
            )  # fmt: skip
            assert too_big.status == 413
    finally:
        process.terminate()
        process.wait(10)


# --- the real Prometheus and every dashboard expression ------------------------------------


async def _surface_traffic(client: Any, auth: dict[str, str]) -> None:
    """A Responses call, a transcription, speech, an image and a refused response id."""
    await client.post("/v1/responses", headers=auth, json={"model": "gpt-4o-mini", "input": "x"})
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", b"RIFF" * 64, filename="a.wav", content_type="audio/wav")
    await client.post("/v1/audio/transcriptions", headers=auth, data=form)
    speech = {"model": "tts-1", "input": "x", "voice": "alloy"}
    await (await client.post("/v1/audio/speech", headers=auth, json=speech)).read()
    await client.post(
        "/v1/images/generations", headers=auth, json={"model": "gpt-image-1", "prompt": "x"}
    )
    await client.get("/v1/responses/resp_never_relayed", headers=auth)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/tollway.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_dashboard_metric_is_one_tollway_exports() -> None:
    from gateway.ops.metrics import Metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\btollway_\w+", expr)}
    assert used and used <= exported, sorted(used - exported)


def test_promtool_accepts_the_shipped_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool (Debian package prometheus) is not installed")
    shipped = str(ROOT / "deploy/prometheus/prometheus.yml")
    done = subprocess.run(
        [str(promtool), "check", "config", shipped], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        skip_or_fail("prometheus (Debian package prometheus) is not installed")
    return str(found)


@pytest.fixture
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tollway-prom-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def _wait_until_ready(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]
) -> None:
    """Prometheus may take seconds to open its port on a busy machine."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "prometheus exited"
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, "prometheus never became ready"
        await asyncio.sleep(0.2)


async def test_prometheus_answers_every_dashboard_expression(
    prometheus_binary: str, aiohttp_server: Any, aiohttp_client: Any, workdir: Path
) -> None:
    provider = FakeProvider()
    upstream = await aiohttp_server(provider.app())
    config = make_config({
        "redis": REDIS_URL, "redis_prefix": f"tollway-test:{time.time_ns()}:",
        "limits": {"per_ip": ["3/minute"]},
        "backends": {
            "wh": {"type": "duckdb", "demo": True},
            "openai": {
                "type": "openai",
                "base_url": str(upstream.make_url("/v1")),
                "api_key": UPSTREAM_KEY,
            },
        },
        "models": {"gpt-4o-mini": {"backend": "openai"}, "whisper-1": {"backend": "openai"},
                   "tts-1": {"backend": "openai"}, "gpt-image-1": {"backend": "openai"}},
    })  # fmt: skip
    client = await aiohttp_client(create_app(config))
    port = client.server.port
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scrape["global"]["scrape_interval"] = "1s"
    job = scrape["scrape_configs"][0]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    for rules in scrape.get("rule_files", []):  # resolved next to the config: copy them along
        shutil.copy(ROOT / "deploy/prometheus" / rules, workdir / rules)
    web_port = free_port()
    process = await asyncio.to_thread(
        subprocess.Popen,
        [prometheus_binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {USER_KEY}"}
    try:
        for round_ in range(4):  # traffic across several scrapes, so rate() has two points
            await client.post(
                "/v1/chat/completions",
                headers=auth,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            )
            stream = await client.post(
                "/v1/chat/completions",
                headers=auth,
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "y"}],
                    "stream": True,
                },
            )
            await stream.read()
            await client.post(
                "/v1/query", headers=auth, json={"backend": "wh", "sql": f"SELECT {round_} AS n"}
            )
            await client.post(
                "/v1/query", headers=auth, json={"backend": "wh", "sql": "SELECT 1 AS same"}
            )
            await _surface_traffic(client, auth)
            for _ in range(2):
                await client.get("/v1/datasets")  # unauthenticated: the per-IP limit rejects some
            await asyncio.sleep(1.2)
        answers: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            await _wait_until_ready(session, f"http://127.0.0.1:{web_port}/-/ready", process)
            for expr in dashboard_expressions():
                for _ in range(30):
                    response = await session.get(
                        f"http://127.0.0.1:{web_port}/api/v1/query", params={"query": expr}
                    )
                    answer = await response.json()
                    if answer.get("status") == "success" and answer["data"]["result"]:
                        break
                    await asyncio.sleep(0.5)
                answers[expr] = answer
        empty = [expr for expr, answer in answers.items() if not answer["data"]["result"]]
        assert empty == [], f"no data for: {empty}"
    finally:
        process.terminate()
        process.wait(10)
