"""deploy/prometheus: `promtool check rules` and `test rules`; every alert tested and documented."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from tests.deploy.tools import DEPLOY, REPO, require_tool

RULES = DEPLOY / "prometheus" / "raytide-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "raytide-rules.test.yaml"
RUNBOOK = REPO / "docs" / "operations" / "alerts.md"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool", "prometheus")
    return subprocess.run(
        [binary, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_check_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts no test sees firing"
    # RaytideDown's "absent" case has no quiet moment by construction; its other case has one.
    assert names - silent == set(), "alerts no test sees staying quiet"


def test_every_alert_has_a_runbook_entry() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    headings = {m.group(1) for m in re.finditer(r"^## (\w+)\s*$", text, re.MULTILINE)}
    for alert in _alerts():
        name = alert["alert"]
        assert name in headings, f"{name} has no '## {name}' section in {RUNBOOK.name}"
        assert alert["annotations"]["runbook"] == f"operations/alerts.md#{name.lower()}"
