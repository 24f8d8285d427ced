"""deploy/systemd: ``systemd-analyze verify`` prints nothing, ``security --offline`` scores it OK or better.

``verify`` exits 0 on warnings, so its output is what is checked. It also checks that ``ExecStart=``'s
program exists, so the unit is checked with that one line pointed at this checkout's ``raytide``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.app.config_file import state_path
from autoscaler.core.config import DaemonConfig
from tests.deploy.tools import DEPLOY, require_tool

UNIT = DEPLOY / "systemd" / "raytide.service"
DROP_IN = DEPLOY / "systemd" / "raytide.service.d"
INSTALLED_EXEC = "/opt/raytide/bin/raytide"


def _raytide_here() -> str:
    exe = Path(sys.executable).with_name("raytide")
    if not exe.exists():
        pytest.skip("the raytide console script is not installed next to this Python")
    return str(exe)


def _render(tmp_path: Path, *, drop_in: bool) -> Path:
    """The unit (and, if asked, its drop-in directory) in a unit directory of its own."""
    units = tmp_path / ("with-drop-in" if drop_in else "plain")
    units.mkdir()
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_EXEC) == 1, "ExecStart= should name the installed raytide once"
    (units / UNIT.name).write_text(text.replace(INSTALLED_EXEC, _raytide_here()), encoding="utf-8")
    if drop_in:
        shutil.copytree(DROP_IN, units / DROP_IN.name)
    return units


def _analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("systemd-analyze", "systemd")
    # SYSTEMD_UNIT_PATH (with the trailing ':' that keeps the built-in path) makes systemd-analyze load
    # the unit by name from there, drop-ins included.
    env = {
        "SYSTEMD_UNIT_PATH": f"{units}:",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SYSTEMD_LOG_COLOR": "0",
    }
    return subprocess.run(
        [binary, *args, UNIT.name], cwd=units, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+ray-driver"])
def test_verify_prints_nothing(tmp_path: Path, drop_in: bool) -> None:
    result = _analyze(_render(tmp_path, drop_in=drop_in), "verify")
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+ray-driver"])
def test_security_score_is_ok_or_better(tmp_path: Path, drop_in: bool) -> None:
    result = _analyze(_render(tmp_path, drop_in=drop_in), "security", "--offline=true", "--no-pager")
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for raytide\.service: ([0-9.]+) (\w+)", result.stdout)
    assert found, result.stdout[-2000:]
    print(f"systemd-analyze security: {found.group(1)} {found.group(2)}")
    assert found.group(2) in ("SAFE", "OK"), result.stdout


def _service_section() -> dict[str, list[str]]:
    # Not configparser: systemd repeats keys (Environment=, SystemCallFilter=) and every value counts.
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_runs_raytide_as_a_notify_service_with_its_own_directories() -> None:
    service = _service_section()
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] and service["DynamicUser"] == ["yes"]
    assert service["StateDirectory"] == ["raytide"] and service["ConfigurationDirectory"] == ["raytide"]
    assert "--config %E/raytide/raytide.yaml" in service["ExecStart"][0]
    # The state file raytide picks under the unit's environment lies in the StateDirectory= (%S/raytide).
    env = " ".join(service["Environment"])
    assert "XDG_STATE_HOME=%S" in env.split()


def test_state_directory_is_where_raytide_keeps_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # %S is /var/lib for a system service: with XDG_STATE_HOME=%S, raytide's default state file is in
    # /var/lib/raytide, the directory StateDirectory=raytide creates for the service's user.
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib")
    assert state_path(DaemonConfig()) == Path("/var/lib/raytide/state.db")
