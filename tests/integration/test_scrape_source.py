"""RayExporterSource: scraping Ray's exporters directly, without Prometheus.

The tests marked ``integration`` scrape the replayed Ray 2.60 capture (frames 6–9 in a loop, one frame per
second: decode backed up, Infer keeping up, one cpu4 and one gpu1 node beside the head) through a temporary
service-discovery file in Ray's format, and compare with a real Prometheus scraping the same replay. The
others fake the network with httpx.MockTransport, for failures a replay cannot be made to produce.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.adapters.scrape import (
    DashboardDiscovery,
    Discovery,
    FileDiscovery,
    RayExporterSource,
    StaticDiscovery,
)
from autoscaler.core.config import EXAMPLE_CONFIG, Config, PrometheusConfig, parse_config
from autoscaler.core.observe import OBSERVE_TEMPLATES, build_snapshot
from autoscaler.core.queries import TEMPLATE_NAMES
from autoscaler.types import Snapshot
from tests.integration.capture_window import check_backed_up_snapshot
from tests.integration.replay import PrometheusServer, ReplayExporter

DECODE = 'operator=~"MapBatches\\\\(decode\\\\).*"'


def write_discovery(path: Path, addresses: list[str]) -> FileDiscovery:
    """The file as Ray's PrometheusServiceDiscoveryWriter writes it."""
    path.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": addresses}]))
    return FileDiscovery(path)


def example_config(window: str, url: str | None = None) -> Config:
    base = parse_config(EXAMPLE_CONFIG)
    settings = PrometheusConfig(url=url, rate_window=window, timeout_seconds=2.0, retries=1)
    return base.model_copy(update={"prometheus": settings})


async def scrape_for(source: RayExporterSource, seconds: float, expected_targets: int) -> None:
    """Scrape until the rounds span ``seconds`` of replay (a readiness loop, not a timed assertion)."""
    first: float | None = None
    for _ in range(400):
        report = await source.scrape()
        assert report.errors == ()
        assert report.answered == expected_targets
        first = report.time if first is None else first
        if report.time - first >= seconds:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"scraping never spanned {seconds} s")


def by_operator(snapshot: Snapshot) -> dict[str, float]:
    return {s.name: s.throughput.get() for s in snapshot.stages if s.throughput.known}


# --- against the replayed Ray exporters -----------------------------------------------------------------


@pytest.mark.integration
async def test_snapshot_from_replayed_exporters(replay_exporter: ReplayExporter, tmp_path: Path) -> None:
    addresses = list(replay_exporter.addresses.values())
    discovery = write_discovery(tmp_path / "prom_metrics_service_discovery.json", addresses)
    config = example_config("4s")
    async with RayExporterSource(config=config.prometheus, discovery=discovery, backoff_seconds=0) as source:
        await scrape_for(source, 4.5, len(addresses))
        results = await source.query_templates()

    assert set(results) == set(TEMPLATE_NAMES)
    assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
    for sample in results["stage_backlog"].samples:
        assert set(sample.labels) == {"dataset", "operator"}
    # Every fake node has ip 192.0.2.2; the instance label (the exporter's host:port) keeps the three apart.
    check_backed_up_snapshot(build_snapshot(config, time.time(), results))


@pytest.mark.integration
async def test_agrees_with_prometheus_on_the_same_replay(
    replay_exporter: ReplayExporter, prometheus_server: PrometheusServer, tmp_path: Path
) -> None:
    window = "8s"
    addresses = list(replay_exporter.addresses.values())
    discovery = write_discovery(tmp_path / "sd.json", addresses)
    config = example_config(window, url=prometheus_server.url)
    async with (
        RayExporterSource(config=config.prometheus, discovery=discovery, backoff_seconds=0) as embedded,
        PrometheusSource(config=config.prometheus) as prometheus,
    ):
        await scrape_for(embedded, 8.5, len(addresses))
        prometheus_server.wait_for_series(
            f"sum by (dataset, operator) (rate(ray_data_num_task_inputs_processed{{{DECODE}}}[{window}])) > 0"
        )
        ours, theirs = await asyncio.gather(
            embedded.query_templates(OBSERVE_TEMPLATES), prometheus.query_templates(OBSERVE_TEMPLATES)
        )
    now = time.time()
    mine = build_snapshot(config, now, ours)
    reference = build_snapshot(config, now, theirs)

    assert mine.errors == reference.errors == ()
    assert [s.name for s in mine.stages] == [s.name for s in reference.stages]
    assert dict(mine.node_counts) == dict(reference.node_counts) == {"cpu4": 1, "gpu1": 1}
    assert dict(mine.pending_counts) == dict(reference.pending_counts)
    # Prometheus' instance label is the same host:port the discovery file lists.
    assert {n.node_id for n in mine.nodes} == {n.node_id for n in reference.nodes}
    # Scrape times differ, so rates differ a little; over an 8 s window of a 4 s loop, not by 2×.
    for stage, rate in by_operator(reference).items():
        if rate > 0:
            assert 0.5 * rate <= by_operator(mine)[stage] <= 2.0 * rate, stage


# --- failures, with a fake network ----------------------------------------------------------------------

ACTIVE_NODES = """\
# HELP autoscaler_active_nodes Number of nodes in the cluster.
# TYPE autoscaler_active_nodes gauge
autoscaler_active_nodes{NodeType="cpu4",SessionName="s"} 1.0
autoscaler_active_nodes{NodeType="gpu1",SessionName="s"} 2.0
"""

NODE = """\
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{ip="192.0.2.2",RayNodeType="worker"} %s
"""


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def answers(by_host: Mapping[str, httpx.Response | Exception]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = by_host[f"{request.url.host}:{request.url.port}"]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


def fake_source(
    handler: Callable[[httpx.Request], httpx.Response],
    discovery: Discovery,
    clock: Clock | None = None,
    **prometheus: object,
) -> RayExporterSource:
    settings = PrometheusConfig.model_validate({"retries": 1, **prometheus})
    return RayExporterSource(
        config=settings,
        discovery=discovery,
        transport=httpx.MockTransport(handler),
        backoff_seconds=0,
        clock=clock or Clock(),
        scrape_on_query=False,
    )


async def test_garbage_and_500_are_recorded_and_other_targets_used() -> None:
    handler = answers(
        {
            "10.0.0.1:44217": httpx.Response(200, text=ACTIVE_NODES),
            "10.0.0.2:8080": httpx.Response(500, text="internal error"),
            "10.0.0.3:8080": httpx.Response(200, text="<html><body>not metrics</body></html>"),
            "10.0.0.4:8080": httpx.Response(200, text=NODE % "12.5"),
        }
    )
    discovery = StaticDiscovery(["10.0.0.1:44217", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080"])
    async with fake_source(handler, discovery) as source:
        report = await source.scrape()
        results = await source.query_templates()

    assert report.answered == 2
    failed = {t.address: t.error or "" for t in report.targets if not t.ok}
    assert set(failed) == {"10.0.0.2:8080", "10.0.0.3:8080"}
    assert "HTTP 500" in failed["10.0.0.2:8080"]
    assert "gave up after 2 attempts" in failed["10.0.0.2:8080"]
    assert "not the Prometheus text format" in failed["10.0.0.3:8080"]
    assert all(r.error is None for r in results.values())
    active = {s.labels["NodeType"]: s.value.get() for s in results["nodes_active"].samples}
    assert active == {"cpu4": 1.0, "gpu1": 2.0}
    cpu = results["node_cpu_utilization"].samples
    assert [dict(s.labels) for s in cpu] == [{"instance": "10.0.0.4:8080", "ip": "192.0.2.2"}]
    assert any("10.0.0.3:8080" in w for w in results["nodes_active"].warnings)


async def test_no_exporter_answering_makes_every_template_an_error() -> None:
    handler = answers(
        {
            "10.0.0.1:8080": httpx.ConnectError("connection refused"),
            "10.0.0.2:8080": httpx.ReadTimeout("slow"),
        }
    )
    async with fake_source(handler, StaticDiscovery(["10.0.0.1:8080", "10.0.0.2:8080"])) as source:
        report = await source.scrape()
        results = await source.query_templates()

    assert report.answered == 0
    assert set(results) == set(TEMPLATE_NAMES)
    for result in results.values():
        assert result.error is not None
        assert result.error.startswith("no Ray exporter answered")
        assert "connection refused" in result.error
        assert "timed out" in result.error
        assert result.samples == ()


async def test_missing_discovery_file_says_where_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "prom_metrics_service_discovery.json"
    async with fake_source(answers({}), FileDiscovery(missing)) as source:
        report = await source.scrape()
        results = await source.query_templates(["stage_backlog"])

    assert report.discovery_error is not None
    error = results["stage_backlog"].error or ""
    assert str(missing) in error
    assert "no Ray exporter answered" in error
    assert "prometheus.url" in error


async def test_discovery_is_reread_every_round(tmp_path: Path) -> None:
    handler = answers(
        {
            "10.0.0.1:8080": httpx.Response(200, text=NODE % "10"),
            "10.0.0.2:8080": httpx.Response(200, text=NODE % "20"),
        }
    )
    path = tmp_path / "sd.json"
    discovery = write_discovery(path, ["10.0.0.1:8080", "10.0.0.2:8080"])
    clock = Clock()
    async with fake_source(handler, discovery, clock) as source:
        await source.scrape()
        both = await source.query_templates(["node_cpu_utilization"])
        write_discovery(path, ["10.0.0.1:8080"])
        clock.now += 5
        report = await source.scrape()
        one = await source.query_templates(["node_cpu_utilization"])
        path.write_text("{not json")
        clock.now += 5
        broken = await source.scrape()

    assert {s.labels["instance"] for s in both["node_cpu_utilization"].samples} == {
        "10.0.0.1:8080",
        "10.0.0.2:8080",
    }
    assert [t.address for t in report.targets] == ["10.0.0.1:8080"]
    # The node that left is gone at once, not kept for the 5-minute lookback.
    assert {s.labels["instance"] for s in one["node_cpu_utilization"].samples} == {"10.0.0.1:8080"}
    # A broken file keeps the last good target list (as Prometheus does) and says so.
    assert broken.answered == 1
    assert broken.discovery_error is not None
    assert "not JSON" in broken.discovery_error


async def test_dashboard_discovery() -> None:
    sd = [{"labels": {"job": "ray"}, "targets": ["10.0.0.1:44217"]}]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/prometheus/sd":
            return httpx.Response(200, json=sd)
        return httpx.Response(200, text=ACTIVE_NODES)

    async with fake_source(handler, DashboardDiscovery("http://127.0.0.1:8265")) as source:
        report = await source.scrape()
        results = await source.query_templates(["nodes_active"])

    assert report.answered == 1
    assert {s.labels["NodeType"] for s in results["nodes_active"].samples} == {"cpu4", "gpu1"}


async def test_nan_from_an_exporter_is_unknown_not_zero() -> None:
    handler = answers({"10.0.0.1:8080": httpx.Response(200, text=NODE % "NaN")})
    async with fake_source(handler, StaticDiscovery(["10.0.0.1:8080"])) as source:
        await source.scrape()
        results = await source.query_templates(["node_cpu_utilization"])

    (sample,) = results["node_cpu_utilization"].samples
    assert not sample.value.known
    assert "NaN" in sample.value.reason


async def test_rates_and_freshness_follow_the_injected_clock() -> None:
    processed = iter(range(0, 1000, 10))

    def handler(request: httpx.Request) -> httpx.Response:
        value = next(processed)
        body = (
            "# TYPE ray_data_num_task_inputs_processed gauge\n"
            f'ray_data_num_task_inputs_processed{{dataset="d",operator="op_1",WorkerId="w"}} {value}\n'
            "# TYPE ray_data_operator_queued_blocks gauge\n"
            'ray_data_operator_queued_blocks{dataset="d",operator="op_1",WorkerId="w"} 3\n'
        )
        return httpx.Response(200, text=body)

    clock = Clock()
    start = clock.now
    async with fake_source(handler, StaticDiscovery(["10.0.0.1:8080"]), clock, rate_window="30s") as source:
        for _ in range(7):
            await source.scrape()
            clock.now += 5
        # The last round was at start + 30; ask 12 s later.
        results = await source.query_templates(["stage_throughput", "stage_freshness"], at=start + 42)

    (throughput,) = results["stage_throughput"].samples
    # Samples at +15…+30 in the window (+12, +42]: 30 blocks over 15 s, extrapolated 3 s back to the window
    # start and half a step (2.5 s) forward, since the last sample is 12 s old: 30 × 20.5/15 / 30 s.
    assert throughput.value.get() == pytest.approx(20.5 / 15)
    (freshness,) = results["stage_freshness"].samples
    assert freshness.value.get() == pytest.approx(12.0)
    assert freshness.timestamp == start + 42


async def test_override_needs_a_prometheus() -> None:
    handler = answers({"10.0.0.1:44217": httpx.Response(200, text=ACTIVE_NODES)})
    source = fake_source(
        handler, StaticDiscovery(["10.0.0.1:44217"]), queries={"nodes_active": "max(autoscaler_active_nodes)"}
    )
    async with source:
        await source.scrape()
        results = await source.query_templates(["nodes_active", "nodes_pending"])

    assert "only a Prometheus can evaluate" in (results["nodes_active"].error or "")
    assert results["nodes_pending"].error is None
    assert results["nodes_pending"].samples == ()
