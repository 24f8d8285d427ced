"""deploy/grafana/raytide.json: a well-formed dashboard whose every expression Prometheus parses.

That every query also returns data from a real run is tests/ray/test_grafana_queries.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy import dashboard
from tests.deploy.tools import require_tool


def test_panels_are_complete_and_use_the_datasource_variable() -> None:
    doc = dashboard.load()
    everything = dashboard.panels(doc)
    ids = [p["id"] for p in doc["panels"]] + [p["id"] for p in everything if p not in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in everything:
        assert p["title"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip()
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "job"]


def test_every_raytide_query_selects_the_job() -> None:
    for q in dashboard.queries():
        for metric in re.findall(r"\b(raytide_[a-z_]+)", q.expr):
            assert re.search(rf"{metric}\{{job=\"\$job\"", q.expr), f"{q.where}: {metric} without job=$job"


def test_the_dashboard_covers_what_an_operator_opens_it_for() -> None:
    text = " ".join(q.expr for q in dashboard.queries())
    for metric in (
        "raytide_nodes_target",
        "raytide_nodes_current",
        "raytide_nodes_pending",
        "raytide:shape_price_per_hour",
        "raytide:budget_per_hour",
        "ray_data_operator_queued_blocks",
        "ray_data_num_task_inputs_processed",
        "raytide_stage_unmet_demand_per_second",
        "raytide_decisions_total",
        "raytide_held",
        "raytide_health_state",
        "raytide_warm_pool_nodes",
        "raytide_warm_pool_claims_total",
        "raytide_warm_pool_misses_total",
        "raytide_warm_pool_claim_latency_seconds_bucket",
        "raytide_policy_duration_seconds_bucket",
        "raytide_tick_duration_seconds_bucket",
    ):
        assert metric in text, metric


def test_prometheus_parses_every_expression(tmp_path: Path) -> None:
    # promtool parses offline what it checks: every query as a recording rule.
    rules = [
        {"record": f"raytide:dashboard_query_{i}", "expr": q.promql()}
        for i, q in enumerate(dashboard.queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [require_tool("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
