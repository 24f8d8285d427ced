"""Every PromQL expression of deploy/grafana/raytide.json answers with data from a real run.

A local autoscaling Ray cluster (v1) runs a burst of the demo's CPU→GPU Ray Data pipeline while ``raytide
run`` drives it with a warm pool of one standby GPU node; the burst starts once that node is ready, so it is
claimed, and the GPU nodes the burst needs beyond it are misses. A real Prometheus scrapes Ray's exporters
(through Ray's service-discovery file) and raytide's ``/metrics``, and loads the alert rules and the price
rules that ``deploy/prometheus/price_rules.py`` writes. Each dashboard query (Grafana's variables filled in
as Grafana would) must return, over the run, at least one series with a number in it. The test ends as soon
as all do.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.scrape.discovery import DEFAULT_DISCOVERY_FILE
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType, free_port
from tests.deploy import dashboard
from tests.deploy.live import Prometheus, RaytideRun, http_get
from tests.deploy.tools import DEPLOY
from tests.support.programs import prometheus_binary, require_ray_cli

pytestmark = [pytest.mark.integration, pytest.mark.ray]

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=2),
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=3),
)
METRICS_REPORT_MS = "4000"
"""As in the demo: Ray Data's operator gauges vanish between the executor's updates when reported faster."""
DEADLINE_S = 420.0
STANDBY_S = 180.0
"""raytide's start (imports on a busy machine), then the standby node's launch."""
STEP_S = 5.0

CONFIG = """
shapes:
  - {{name: cpu4, resources: {{CPU: 4}}, price_per_hour: 0.20, min: 0, max: 2, launch_seconds: 5}}
  - {{name: gpu1, resources: {{CPU: 1, GPU: 1}}, price_per_hour: 1.00, min: 0, max: 3, launch_seconds: 5}}
stages:
  - {{name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {{CPU: 1}},
     prior_rate: {{cpu4: 2, gpu1: 2}}}}
  - {{name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {{CPU: 1, GPU: 1}},
     prior_rate: {{gpu1: 1}}, max_slots: 3}}
ignore_operators: "^(Input|InputDataBuffer|ReadRange)(_\\\\d+)?$"
targets: {{drain_seconds: 20, headroom: 0.2}}
bounds: {{max_nodes: 5, budget_per_hour: 4, max_step_down: 2, scale_down_window_seconds: 20}}
prometheus: {{rate_window: 20s, staleness_seconds: 30}}
daemon: {{interval_seconds: 2, observe_timeout_seconds: 8, act_timeout_seconds: 15, http_port: {port},
         state_path: "{state}"}}
ray: {{floor_form: resource, use_coordinator: auto}}
warm_pool: {{enabled: true, min: {{gpu1: 1}}, max: {{gpu1: 1}}, claim_poll_seconds: 0.5}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalAutoscalingCluster]:
    require_ray_cli()
    with LocalAutoscalingCluster(
        NODE_TYPES,
        autoscaler_v2=False,
        idle_timeout_minutes=0.5,
        include_dashboard=True,  # it writes the exporters' service-discovery file
        extra_env={"RAY_metrics_report_interval_ms": METRICS_REPORT_MS},
    ) as c:
        yield c


def _wait_for_standby(raytide: RaytideRun, port: int) -> None:
    ready = 'raytide_warm_pool_nodes{shape="gpu1",state="ready"} 1.0'
    deadline = time.monotonic() + STANDBY_S
    while time.monotonic() < deadline:
        assert raytide.process.poll() is None, f"raytide exited\n{raytide.log_tail()}"
        with contextlib.suppress(OSError):
            if ready in http_get(f"http://127.0.0.1:{port}/metrics").decode():
                return
        time.sleep(0.5)
    pytest.fail(f"no standby gpu1 node became ready\n{raytide.log_tail()}")


def _has_data(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


# Counters of events this run may not produce: a warm-pool miss happens only when a burst outgrows the pool.
# Until raytide has counted one, its series does not exist and a query over it is rightly empty.
EVENT_COUNTERS = ("raytide_warm_pool_misses_total",)


def _event_free(missing: dict[str, str], metrics: bytes) -> dict[str, str]:
    """Drop 'no data' for queries over event counters raytide has not counted yet (errors stay)."""
    text = metrics.decode()
    absent = [name for name in EVENT_COUNTERS if f"{name}{{" not in text]
    return {
        k: v for k, v in missing.items() if not (v.startswith("no data:") and any(n in v for n in absent))
    }


def _missing(prom: Prometheus, queries: list[dashboard.Query], start: float) -> dict[str, str]:
    missing: dict[str, str] = {}
    end = time.time()
    for q in queries:
        try:
            series = prom.query_range(q.promql(), start, end, STEP_S)
        except Exception as e:  # an invalid query is a failure of its own, reported with the rest
            missing[q.where] = f"error: {e}"
            continue
        if not _has_data(series):
            missing[q.where] = f"no data: {q.promql()}"
    return missing


def test_every_dashboard_query_returns_data(cluster: LocalAutoscalingCluster, tmp_path: Path) -> None:
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "raytide.yaml"
    config.write_text(CONFIG.format(port=port, state=tmp_path / "state.db"), encoding="utf-8")
    prices = tmp_path / "raytide-prices.yaml"
    prices.write_text(
        subprocess.run(
            [sys.executable, str(DEPLOY / "prometheus" / "price_rules.py"), str(config)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout,
        encoding="utf-8",
    )
    prom = Prometheus(
        binary,
        tmp_path / "prometheus",
        [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(DEFAULT_DISCOVERY_FILE)], "refresh_interval": "5s"}],
            },
            {"job_name": "raytide", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
        rule_files=[DEPLOY / "prometheus" / "raytide-rules.yaml", prices],
    )
    raytide: RaytideRun | None = None
    pipeline: subprocess.Popen[bytes] | None = None
    try:
        prom.wait_ready()
        start = time.time()
        raytide = RaytideRun(config, cluster.address, tmp_path / "raytide.log")
        # The pipeline starts once a standby node is ready, so its first wait is served by a claim.
        _wait_for_standby(raytide, port)
        env = dict(os.environ, RAY_metrics_report_interval_ms=METRICS_REPORT_MS, PYTHONUNBUFFERED="1")
        env.pop("RAY_ADDRESS", None)
        with (tmp_path / "pipeline.log").open("wb") as out:
            pipeline = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "autoscaler.demo.pipeline",
                    "--address",
                    cluster.address,
                    "--bursts",
                    "30",
                    "--max-actors",
                    "3",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        queries = dashboard.queries()
        missing = {q.where: "not asked yet" for q in queries}
        deadline = time.monotonic() + DEADLINE_S
        while missing and time.monotonic() < deadline:
            assert raytide.process.poll() is None, f"raytide exited\n{raytide.log_tail()}"
            time.sleep(STEP_S)
            missing = _event_free(
                _missing(prom, queries, start), http_get(f"http://127.0.0.1:{port}/metrics")
            )
        if missing:
            pytest.fail(
                "dashboard queries without data:\n"
                + "\n".join(f"  {k}: {v}" for k, v in missing.items())
                + f"\nraytide:\n{raytide.log_tail()}\nprometheus:\n{prom.log_tail()}\n"
                + f"raytide /metrics:\n{http_get(f'http://127.0.0.1:{port}/metrics').decode()[-3000:]}"
            )
        print(f"{len(queries)} dashboard queries answered with data")
    finally:
        if pipeline is not None and pipeline.poll() is None:
            pipeline.terminate()
            pipeline.wait(timeout=60)
        if raytide is not None:
            raytide.terminate()
        prom.stop()
