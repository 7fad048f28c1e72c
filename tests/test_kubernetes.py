"""The Kubernetes manifests, rendered with kubectl kustomize and checked against the real
Kubernetes schemas and against Tollway itself (Kubernetes does not run here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config, parse_config
from tests.conftest import log_lines as log_lines  # noqa: F401 - a fixture
from tests.conftest import make_config, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy/kubernetes"
K8S_VERSION = "1.32"
SECRET = yaml.safe_load((KUBE / "base/secret.template.yaml").read_text())
FAKE_ENV = {
    "TOLLWAY_STATE_URL": "postgresql://u@db/t",
    "TOLLWAY_REDIS_URL": "redis://r:6379",
    "DATABASE_URL": "postgresql://r@db/t",
    "TOLLWAY_ADMIN_KEY_HASH": "sha256:" + "0" * 64,
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        skip_or_fail("kubectl (with kustomize) is not installed")
    done = subprocess.run(
        [str(kubectl), "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def config_of(objects: list[dict[str, Any]]) -> Any:
    text = by_kind(objects, "ConfigMap")[0]["data"]["tollway.yaml"]
    env = {name: "x" for name in SECRET["stringData"]} | FAKE_ENV
    return parse_config(yaml.safe_load(text), env=env, source="configmap")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_is_valid_for_kubernetes(overlay: str) -> None:
    import kubernetes_validate

    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    expected = {
        "Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy", "Ingress", "ServiceMonitor",
    }  # fmt: skip
    assert kinds >= expected
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":  # a CRD: the core schemas do not know it
            assert obj["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        if obj["kind"] == "PrometheusRule":  # a CRD too; its rules are tested with promtool
            assert obj["spec"]["groups"]
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_deployment_agrees_with_tollway(overlay: str) -> None:
    objects = render(overlay)
    config = config_of(objects)
    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    routes = {r.resource.canonical for r in create_app(make_config()).router.routes() if r.resource}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"][0]["containerPort"] == config.server.port
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    # the pause, the drain, then the exit (the process is gone within the timeout + 2 s)
    assert pod["terminationGracePeriodSeconds"] >= config.server.shutdown_timeout_s + pause + 2
    assert pause >= 2  # endpoints are removed before Tollway stops accepting
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["TOLLWAY_REPLICAS"]) == deployment["spec"]["replicas"]
    known = {"TOLLWAY_CONFIG", "TOLLWAY_HOST", "TOLLWAY_PORT", "TOLLWAY_REPLICAS"}
    assert set(env) <= known
    referenced = set(
        re.findall(r"\$\{([A-Z_]+)", by_kind(objects, "ConfigMap")[0]["data"]["tollway.yaml"])
    )
    assert referenced | {"TOLLWAY_SECRET_KEY"} == set(SECRET["stringData"])
    if deployment["spec"]["replicas"] > 1:
        assert config.redis and config.state.startswith("postgresql")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_restricted_pod_security_on_every_container(overlay: str) -> None:
    pod = by_kind(render(overlay), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    cron = by_kind(render(overlay), "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for container in [*pod["containers"], *cron["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    config = config_of(render(overlay))
    assert str(Path(config.state_spill_dir).parent) in mounts  # the spill file can be written


def test_ingress_streams_unbuffered_and_matches_the_body_limit() -> None:
    objects = render("prod")
    config = config_of(objects)
    ingresses = {i["metadata"]["name"]: i for i in by_kind(objects, "Ingress")}
    stream = ingresses["tollway-stream"]
    notes = stream["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    paths = {p["path"] for r in stream["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/v1/chat/completions", "/openai/v1/chat/completions"}
    for ingress in ingresses.values():
        size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert int(size.rstrip("m")) * 1024 * 1024 == config.server.max_body_bytes
        assert ingress["spec"]["tls"]


def test_no_secret_carries_a_value_and_none_is_rendered() -> None:
    assert all(value == "" for value in SECRET["stringData"].values())
    for overlay in ("dev", "prod"):
        assert by_kind(render(overlay), "Secret") == []


def test_check_config_accepts_the_configmap(tmp_path: Path) -> None:
    objects = render("prod")
    path = tmp_path / "tollway.yaml"
    path.write_text(by_kind(objects, "ConfigMap")[0]["data"]["tollway.yaml"])
    config = load_config(str(path), env=FAKE_ENV)
    assert config.server.port == 8080


def test_replicas_without_shared_state_warn_at_start(log_lines: Any) -> None:
    create_app(make_config({"server": {"replicas": 3}}))
    assert any("in-process limits" in line for line in log_lines())


async def test_a_replica_stopped_mid_traffic_fails_no_request(
    tmp_path: Path, pg_database: str
) -> None:
    """What a rolling update relies on: SIGTERM one of two replicas (configured as the prod
    ConfigMap says, on the machine's Postgres and Redis) while a slow query and a batch
    of requests are in flight through both; nothing fails and the slow query finishes."""
    import asyncio
    import os
    import signal
    import sys

    import aiohttp

    from gateway.config.keyhash import hash_key
    from tests.services import REDIS_URL, free_port

    dsn = pg_database
    key = "tw_k8s-admin-0123456789abcdefghijklmn"
    config = tmp_path / "tollway.yaml"
    config.write_text(by_kind(render("prod"), "ConfigMap")[0]["data"]["tollway.yaml"])
    ports = [free_port(), free_port()]
    processes = []
    env = {
        **os.environ, "PYTHONPATH": os.getcwd(), "TOLLWAY_CONFIG": str(config),
        "TOLLWAY_HOST": "127.0.0.1", "TOLLWAY_REPLICAS": "2", "TOLLWAY_STATE_URL": dsn,
        "TOLLWAY_REDIS_URL": REDIS_URL, "DATABASE_URL": dsn,
        "TOLLWAY_ADMIN_KEY_HASH": hash_key(key),
    }  # fmt: skip
    try:
        for port in ports:
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    env={**env, "TOLLWAY_PORT": str(port)},
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            )
        headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
        async with aiohttp.ClientSession() as session:
            for port in ports:
                for _ in range(200):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/health/ready") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)

            async def ask(port: int, sql: str) -> int:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/query",
                    json={"backend": "warehouse", "sql": sql},
                    headers=headers,
                ) as response:
                    await response.read()
                    return response.status

            slow = asyncio.ensure_future(ask(ports[0], "SELECT pg_sleep(1.5) IS NULL AS slept"))
            batch = [
                asyncio.ensure_future(ask(ports[i % 2], f"SELECT {i} AS n")) for i in range(20)
            ]
            await asyncio.sleep(0.3)
            processes[0].send_signal(signal.SIGTERM)  # the replica with the slow query
            statuses = await asyncio.gather(slow, *batch)
            after = [await ask(ports[1], f"SELECT {i} AS m") for i in range(5)]
        assert statuses == [200] * 21 and after == [200] * 5
        assert await asyncio.wait_for(processes[0].wait(), 20) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
