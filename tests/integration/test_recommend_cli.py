"""`raytide recommend` end to end: a real Prometheus scraping a replay of a real Ray capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.cli import EXIT_CONFIG, EXIT_MISSING_METRICS, EXIT_SOURCE, app
from tests.integration.replay import PrometheusServer, free_port

pytestmark = pytest.mark.integration

CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.20, min: 0, max: 8}
  - {name: gpu1, resources: {CPU: 2, GPU: 1}, price_per_hour: 1.00, min: 0, max: 4}
stages:
  - {name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {CPU: 1}}
  - {name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {CPU: 1, GPU: 1}}
targets: {drain_seconds: 10, headroom: 0.2}
prometheus: {rate_window: 10s}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "raytide.yaml"
    p.write_text(CONFIG)
    return p


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_recommend_adds_decode_capacity(prometheus_server: PrometheusServer, config_file: Path) -> None:
    prometheus_server.wait_for_series("rate(ray_data_num_task_inputs_processed[10s]) > 0")
    code, out, errout = run(
        "recommend",
        "--prometheus",
        prometheus_server.url,
        "--config",
        str(config_file),
        "--json",
        "--history",
        "6s",
        "--step",
        "2s",
    )
    assert code == 0, errout
    doc = json.loads(out)
    assert doc["schema"] == "raytide.recommendation/v1"
    plan = {p["shape"]: p for p in doc["plan"]}
    stages = {s["name"]: s for s in doc["stages"]}
    assert stages["decode"]["backlog"] > 0
    assert stages["decode"]["bottleneck"]
    assert plan["cpu4"]["target"] > plan["cpu4"]["current"]
    assert plan["cpu4"]["reason"]
    print(json.dumps(doc, indent=1))


def test_unreachable_prometheus_exits_3_with_a_fix(config_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, errout = run("recommend", "--prometheus", url, "--config", str(config_file))
    assert code == EXIT_SOURCE
    assert "not usable" in errout and "--prometheus" in errout


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shapes:\n  - {name: a, resources: {CPU: 4}, price_per_hour: -1}\n")
    code, _, errout = run("recommend", "--prometheus", "http://127.0.0.1:1", "--config", str(bad))
    assert code == EXIT_CONFIG
    assert "shapes[0].price_per_hour" in errout


def test_missing_metric_exits_4_and_holds(prometheus_server: PrometheusServer, tmp_path: Path) -> None:
    cfg = tmp_path / "missing.yaml"
    cfg.write_text(
        CONFIG.replace(
            "prometheus: {rate_window: 10s}",
            "prometheus:\n  rate_window: 10s\n  queries:\n"
            "    stage_slots: 'sum by (dataset, operator) (no_such_metric_anywhere)'",
        )
    )
    code, out, errout = run(
        "recommend",
        "--prometheus",
        prometheus_server.url,
        "--config",
        str(cfg),
        "--json",
        "--history",
        "4s",
        "--step",
        "2s",
    )
    assert code == EXIT_MISSING_METRICS
    doc = json.loads(out)
    assert doc["held"]
    assert all(p["target"] >= p["current"] for p in doc["plan"])
    assert "slots" in errout


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "shapes:\n  - name: a\n    resources: {}\n    price_per_hour: x\n"
        "stages:\n  - name: s\n    operator: '('\n"
    )
    code, _, errout = run("check-config", str(bad))
    assert code == EXIT_CONFIG
    assert "shapes[0].resources (line 3)" in errout
    assert "shapes[0].price_per_hour (line 4)" in errout
    assert "stages[0].operator (line 7)" in errout
