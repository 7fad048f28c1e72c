"""The shipped systemd unit: systemd-analyze accepts it without a warning, it is hardened,
and it waits longer than Tollway's drain before killing."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.config import ServerConfig
from tests.conftest import skip_or_fail

UNIT = Path(__file__).resolve().parent.parent / "deploy/systemd/tollway.service"


def service_section() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail("systemd-analyze (Debian package systemd) is not installed")
    # verify checks that ExecStart's binary exists: point the install path at real programs.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tollway", "python"):
        (bin_dir / name).symlink_to(sys.executable)
    unit = tmp_path / "tollway.service"
    unit.write_text(UNIT.read_text().replace("/opt/tollway/venv/bin/", f"{bin_dir}/"))
    done = subprocess.run(
        [str(analyze), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    own = [line for line in done.stderr.splitlines() if str(unit) in line]
    assert not own, own  # unknown keys and bad values are only warnings: refuse them too


def test_the_unit_is_hardened() -> None:
    values = service_section()
    for key, wanted in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "StateDirectory": "tollway",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }.items():
        assert values.get(key) == [wanted], key
    assert values["CapabilityBoundingSet"] == [""]
    assert not any("--log-file" in cmd for cmd in values["ExecStart"])  # journal, not files


def test_systemd_waits_longer_than_the_drain() -> None:
    values = service_section()
    drain = ServerConfig().shutdown_timeout_s
    assert seconds(values["TimeoutStopSec"][0]) > drain + 5


def test_the_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
