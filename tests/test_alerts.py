"""The alert rules: promtool accepts and unit-tests them, every rule has a firing test, every
metric they name is one a running Tollway exposes, and every alert has a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy/prometheus"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Names PromQL uses that are not metrics: functions, keywords, label names, our recorded series.
NOT_METRICS = {"up"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        skip_or_fail("promtool (Debian package prometheus) is not installed")
    return str(found)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers followed by a selector or range."""
    return set(re.findall(r"\b(tollway_[a-z_]+|up)\b(?=\s*[{\[)])", expr))


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(PROM / "thresholds.yml"), str(PROM / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        cwd=PROM,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_has_a_firing_and_a_silent_case_per_severity() -> None:
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            if not check.get("exp_alerts"):
                silent.add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                fired.add((check["alertname"], alert["exp_labels"]["severity"]))
    for rule in alert_rules():
        assert (rule["alert"], rule["labels"]["severity"]) in fired, rule["alert"]
        assert rule["alert"] in silent, rule["alert"]


def test_every_threshold_the_alerts_use_is_recorded() -> None:
    recorded = {
        rule["record"]
        for group in yaml.safe_load((PROM / "thresholds.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    used = set(
        re.findall(r"scalar\((tollway:threshold:[a-z_]+)\)", (PROM / "alerts.yml").read_text())
    )
    assert used and used <= recorded, used - recorded


async def test_every_metric_in_the_rules_is_exposed_by_a_running_tollway(
    client: TestClient,
) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    exposed = {
        family.name + suffix
        for family in text_string_to_metric_families(await response.text())
        for suffix in SUFFIXES.get(family.type, ("",))
    }
    named = set().union(*(metric_names(rule["expr"]) for rule in alert_rules())) - NOT_METRICS
    assert len(named) >= 8
    assert named <= exposed, sorted(named - exposed)


def test_every_alert_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs/runbook.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", url
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_the_kubernetes_rule_carries_the_same_groups() -> None:
    resource = yaml.safe_load((ROOT / "deploy/kubernetes/base/prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    shipped = [
        *yaml.safe_load((PROM / "thresholds.yml").read_text())["groups"],
        *yaml.safe_load((PROM / "alerts.yml").read_text())["groups"],
    ]
    assert resource["spec"]["groups"] == shipped


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        skip_or_fail("amtool (Debian package prometheus-alertmanager) is not installed")
    done = subprocess.run(
        [str(amtool), "check-config", str(ROOT / "deploy/alertmanager/alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
