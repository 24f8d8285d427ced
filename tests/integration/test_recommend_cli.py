"""`raytide recommend` end to end: a real Prometheus scraping a replay of a real Ray capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

# The replayed capture plays in real time, so what a recommendation sees depends on when it reads: load the
# decision stack (scikit-learn, SciPy: seconds) here, at collection, not inside the first command, whose
# reading would otherwise land later in the capture than the assertions below were written for.
import autoscaler.app.recommend  # noqa: F401
from autoscaler.app.cli import EXIT_CONFIG, EXIT_MISSING_METRICS, EXIT_SOURCE, app
from tests.integration.replay import PrometheusServer, free_port

pytestmark = pytest.mark.integration

# The capture's cluster: one 4-CPU node and one node whose only CPU goes with its (fake) GPU, so decode can
# only grow on cpu4. A 5 s drain target makes the capture's decode backlog more than one cpu4 node can clear.
CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.20, min: 0, max: 8, launch_seconds: 10}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.00, min: 0, max: 4, launch_seconds: 10}
stages:
  - {name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {CPU: 1}}
  - {name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {CPU: 1, GPU: 1}}
targets: {drain_seconds: 5, headroom: 0.2}
prometheus: {rate_window: 10s}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "raytide.yaml"
    p.write_text(CONFIG)
    return p


def wait_for_history(server: PrometheusServer) -> None:
    """Until Prometheus holds enough scrapes for the history and rate window the tests ask for."""
    server.wait_for_series("min(count_over_time(ray_data_num_task_inputs_processed[30s])) >= 20")


def run(*args: str) -> tuple[int, str, str]:
    # Wide enough that rich does not wrap table cells (CliRunner is not a terminal: 80 columns otherwise).
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def recommend(prometheus: str, config: Path, *flags: str) -> tuple[int, str, str]:
    return run("recommend", "--prometheus", prometheus, "--config", str(config), *flags)


def test_recommend_adds_decode_capacity(prometheus_server: PrometheusServer, config_file: Path) -> None:
    wait_for_history(prometheus_server)
    code, out, errout = recommend(
        prometheus_server.url, config_file, "--json", "--history", "6s", "--step", "2s"
    )
    assert code == 0, errout
    doc = json.loads(out)
    assert doc["schema"] == "raytide.recommendation/v1"
    plan = {p["shape"]: p for p in doc["plan"]}
    stages = {s["name"]: s for s in doc["stages"]}
    assert stages["decode"]["backlog"] > 0
    assert stages["decode"]["bottleneck"]
    assert plan["cpu4"]["target"] > plan["cpu4"]["current"]
    assert "decode" in plan["cpu4"]["reason"]
    decode_slots = sum(p["slots"] for p in doc["placements"] if p["stage"] == "decode")
    assert decode_slots > stages["decode"]["slots_busy"]
    # The read stage does no work in this window: no slot, no node is planned for it.
    assert stages["ReadRange_1"]["throughput"] == 0
    assert not [p for p in doc["placements"] if p["stage"] == "ReadRange_1"]
    assert all(p["shape"] != "cpu4" for p in doc["placements"] if p["stage"] == "infer")
    assert doc["cost_per_hour"]["target"] >= doc["cost_per_hour"]["now"]


def test_recommend_table_explains_each_change(prometheus_server: PrometheusServer, config_file: Path) -> None:
    wait_for_history(prometheus_server)
    code, out, errout = recommend(prometheus_server.url, config_file, "--history", "4s", "--step", "2s")
    assert code == 0, errout
    assert "bottleneck" in out
    assert "cpu4" in out and "decode slot(s)" in out


def test_unreachable_prometheus_exits_3_with_a_fix(config_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, errout = recommend(url, config_file)
    assert code == EXIT_SOURCE
    assert "not usable" in errout and "--prometheus" in errout


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shapes:\n  - {name: a, resources: {CPU: 4}, price_per_hour: -1}\n")
    code, _, errout = recommend("http://127.0.0.1:1", bad)
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
    code, out, errout = recommend(prometheus_server.url, cfg, "--json", "--history", "4s", "--step", "2s")
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
