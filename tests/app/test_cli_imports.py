"""The command line starts without the heavy stack: ``raytide --help``, every command's ``--help``,
``raytide policies`` and ``raytide check-config`` (with a built-in policy) import no scikit-learn, SciPy, Ray
or matplotlib. Each case runs the typer app in a fresh interpreter and reads its ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from autoscaler.app.cli import app
from autoscaler.core.config import EXAMPLE_CONFIG

HEAVY = ("sklearn", "scipy", "ray", "matplotlib")

# Runs the app as the console script does, then reports how it exited and which heavy packages it imported.
PROBE = f"""
import json, sys
from autoscaler.app.cli import app
try:
    app(sys.argv[1:], prog_name="raytide")
    code = 0
except SystemExit as e:
    code = e.code or 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def _run(*args: str) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no report; stderr:\n{proc.stderr[-2000:]}"
    report = json.loads(lines[-1])
    return int(report["code"]), list(report["heavy"]), proc.stdout + proc.stderr


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return sorted(group.commands)


def test_every_command_is_probed() -> None:
    assert {"check-config", "run", "policies", "recommend", "simulate", "demo"} <= set(_commands())


@pytest.mark.parametrize("args", [[], ["--help"]], ids=["no-args", "--help"])
def test_top_level_help_imports_nothing_heavy(args: list[str]) -> None:
    code, heavy, out = _run(*args)
    assert code in (0, 2), out  # no arguments: typer prints the help and exits 2
    assert "Commands" in out
    assert heavy == [], out


@pytest.mark.parametrize("command", _commands())
def test_command_help_imports_nothing_heavy(command: str) -> None:
    code, heavy, out = _run(command, "--help")
    assert code == 0, out
    assert "Usage" in out
    assert heavy == []


def test_policies_imports_nothing_heavy() -> None:
    code, heavy, out = _run("policies")
    assert code == 0, out
    assert "policies.throughput:ThroughputPolicy" in out
    assert heavy == []


def test_check_config_with_a_builtin_policy_imports_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "raytide.yaml"
    config.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    code, heavy, out = _run("check-config", str(config))
    assert code == 0, out
    assert "OK" in out
    assert heavy == []
