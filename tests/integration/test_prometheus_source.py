"""PrometheusSource and build_snapshot against a real Prometheus scraping replayed Ray 2.60 exporters.

The replay loops frames 6–9 of the capture: the decode stage is backed up (89–187 blocks queued), Infer keeps
up (0–18 queued), and one cpu4 and one gpu1 node run beside the head.
"""

from __future__ import annotations

import time

import pytest

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.core.config import EXAMPLE_CONFIG, Config, PrometheusConfig, parse_config
from autoscaler.core.observe import OBSERVE_TEMPLATES, build_snapshot
from tests.integration.capture_window import check_backed_up_snapshot
from tests.integration.replay import PrometheusServer

pytestmark = pytest.mark.integration

WINDOW = "10s"
DECODE = 'operator=~"MapBatches\\\\(decode\\\\).*"'


@pytest.fixture
def rates_ready(prometheus_server: PrometheusServer) -> str:
    """Prometheus has scraped long enough for rate() over the test window to see decode work."""
    prometheus_server.wait_for_series(
        f"sum by (dataset, operator) (rate(ray_data_num_task_inputs_processed{{{DECODE}}}[{WINDOW}])) > 0"
    )
    prometheus_server.wait_for_series(f"deriv(ray_data_operator_queued_blocks{{{DECODE}}}[{WINDOW}])")
    return prometheus_server.url


def example_config(url: str, **prometheus: object) -> Config:
    base = parse_config(EXAMPLE_CONFIG)
    settings = PrometheusConfig.model_validate({"url": url, "rate_window": WINDOW, **prometheus})
    return base.model_copy(update={"prometheus": settings})


async def test_templates_answer_from_real_server(rates_ready: str) -> None:
    async with PrometheusSource(config=PrometheusConfig(url=rates_ready, rate_window=WINDOW)) as source:
        results = await source.query_templates()

    stage_templates = ("stage_backlog", "stage_throughput", "stage_arrival", "stage_slots", "stage_freshness")
    for name in stage_templates:
        assert results[name].error is None, (name, results[name].error)
    backlog = {s.labels["operator"]: s.value for s in results["stage_backlog"].samples}
    assert backlog["MapBatches(decode)_2"].get() > 0
    throughput = {s.labels["operator"]: s.value for s in results["stage_throughput"].samples}
    assert throughput["MapBatches(decode)_2"].known
    assert throughput["MapBatches(decode)_2"].get() > 0
    for sample in results["stage_backlog"].samples:
        assert set(sample.labels) == {"dataset", "operator"}
    nodes = results["node_cpu_utilization"].samples
    # All fake nodes share ip 192.0.2.2; only the per-target instance label keeps the three apart.
    assert len(nodes) == 3
    assert {s.labels["ip"] for s in nodes} == {"192.0.2.2"}
    assert len({s.labels["instance"] for s in nodes}) == 3


async def test_snapshot_of_replayed_cluster(rates_ready: str) -> None:
    config = example_config(rates_ready)
    async with PrometheusSource(config=config.prometheus) as source:
        results = await source.query_templates(OBSERVE_TEMPLATES)
    snapshot = build_snapshot(config, time.time(), results)

    check_backed_up_snapshot(snapshot)
    decode = snapshot.stage("decode")
    infer = snapshot.stage("infer")
    assert infer.backlog.get() <= 18
    assert decode.arrival_rate.get() >= 0
    # Only gpu1 can host an Infer slot ({CPU: 1, GPU: 1}).
    assert set(infer.slots_by_shape) <= {"gpu1"}
    assert sum(infer.slots_by_shape.values()) == pytest.approx(infer.slots_busy.get())
    assert "Input_0" not in {s.name for s in snapshot.stages}


async def test_missing_metric_is_unknown_not_zero(rates_ready: str) -> None:
    missing = "sum by (dataset, operator) (rate(ray_data_metric_that_does_not_exist[{window}]))"
    config = example_config(rates_ready, queries={"stage_throughput": missing})
    async with PrometheusSource(config=config.prometheus) as source:
        raw = await source.query("ray_data_metric_that_does_not_exist")
        results = await source.query_templates(OBSERVE_TEMPLATES)

    assert raw.error is None
    assert raw.samples == ()
    snapshot = build_snapshot(config, time.time(), results)
    decode = snapshot.stage("decode")
    assert decode.backlog.known
    assert not decode.throughput.known
    assert decode.throughput.value is None
    assert "no series" in decode.throughput.reason
    assert any("decode" in e and "throughput" in e for e in snapshot.errors)


async def test_invalid_promql_error_is_carried(rates_ready: str) -> None:
    config = example_config(rates_ready, queries={"stage_backlog": "sum by (dataset, operator) ("})
    async with PrometheusSource(config=config.prometheus) as source:
        raw = await source.query("sum by (")
        results = await source.query_templates(OBSERVE_TEMPLATES)

    assert raw.samples == ()
    assert raw.error is not None
    assert "bad_data" in raw.error
    assert "HTTP 400" in raw.error
    snapshot = build_snapshot(config, time.time(), results)
    decode = snapshot.stage("decode")
    assert not decode.backlog.known
    assert "stage_backlog query failed" in decode.backlog.reason
    assert "bad_data" in decode.backlog.reason
    assert decode.throughput.known
    assert any("stage_backlog query failed" in e for e in snapshot.errors)
