"""The in-process evaluation behind RayExporterSource, on hand-made series: no network, no clock.

Expected numbers follow Prometheus' own definitions (``extrapolatedRate``, ``linearRegression``), worked out
by hand in each test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from autoscaler.adapters.scrape import (
    PLANS,
    DiscoveryError,
    Labels,
    SeriesKey,
    SeriesStore,
    aggregate,
    avg_over_time,
    deriv,
    evaluate_template,
    labels_of,
    parse_exposition,
    parse_service_discovery,
    rate,
    select_instant,
    select_range,
)
from autoscaler.core.config import EXAMPLE_CONFIG, parse_config
from autoscaler.core.observe import OBSERVE_TEMPLATES, build_snapshot
from autoscaler.core.queries import TEMPLATES, QueryResult

DS = "dataset_0"
DECODE = "MapBatches(decode)_2"


def key(metric: str, **labels: str) -> SeriesKey:
    return (metric, labels_of(labels))


def stage_labels(operator: str, worker: str = "w1", instance: str = "10.0.0.1:8080") -> dict[str, str]:
    return {"dataset": DS, "operator": operator, "WorkerId": worker, "instance": instance}


# --- the templates are the ones queries.py defines -------------------------------------------------------


def test_every_default_template_has_a_plan_that_spells_it() -> None:
    # targets_down is answered from the scrape round's own target report, not from stored series.
    assert set(PLANS) == set(TEMPLATES) - {"targets_down"}
    for name, plan in PLANS.items():
        assert plan.promql() == TEMPLATES[name]


# --- rate -----------------------------------------------------------------------------------------------


def test_rate_of_steady_counter_covering_the_window() -> None:
    points = [(float(t), 10.0 * t) for t in range(1, 6)]
    # 40 over 4 s of samples, extrapolated 1 s back to the window start (the counter's zero point): 50 / 5 s.
    assert rate(points, start=0.0, end=5.0) == pytest.approx(10.0)


def test_rate_treats_a_drop_as_counter_reset() -> None:
    points = [(1.0, 10.0), (2.0, 20.0), (3.0, 5.0), (4.0, 15.0)]
    # Increase: 10 (to 20) + 5 (from 0 after the reset) + 10 = 25 over 3 s, extrapolated by 1 s to the start.
    assert rate(points, start=0.0, end=4.0) == pytest.approx(25.0 * (4.0 / 3.0) / 4.0)


def test_rate_of_a_gauge_that_only_falls_is_not_negative() -> None:
    points = [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]
    value = rate(points, start=0.0, end=3.0)
    assert value is not None
    assert value > 0  # every drop is a reset: rate() never goes negative


def test_rate_extrapolates_half_a_step_when_series_starts_inside_window() -> None:
    points = [(float(t), 1000.0 + t) for t in range(50, 61)]
    # Starts 50 s after the window start (> 1.1 × the 1 s step): only half a step is added before it.
    assert rate(points, start=0.0, end=60.0) == pytest.approx(10.0 * (10.0 + 0.5) / 10.0 / 60.0)


def test_rate_does_not_extrapolate_below_zero() -> None:
    points = [(30.0, 1.0), (40.0, 11.0), (50.0, 21.0), (60.0, 31.0)]
    # Half a step (5 s) back would go below 0; the zero point is 1 s before the first sample.
    assert rate(points, start=0.0, end=60.0) == pytest.approx(30.0 * (30.0 + 1.0) / 30.0 / 60.0)


def test_rate_needs_two_samples() -> None:
    assert rate([], start=0.0, end=10.0) is None
    assert rate([(5.0, 3.0)], start=0.0, end=10.0) is None


def test_rate_of_nan_is_nan_not_zero() -> None:
    value = rate([(1.0, 1.0), (2.0, 2.0), (3.0, math.nan)], start=0.0, end=3.0)
    assert value is not None
    assert math.isnan(value)


# --- deriv, avg_over_time -------------------------------------------------------------------------------


def test_deriv_of_a_line_is_its_slope() -> None:
    assert deriv([(100.0 + t, 7.0 - 2.5 * t) for t in range(6)]) == pytest.approx(-2.5)


def test_deriv_is_the_least_squares_slope() -> None:
    rng = np.random.default_rng(7)
    ts = np.sort(rng.uniform(0, 60, 25)) + 1.7e9
    ys = 3.0 * (ts - ts[0]) + rng.normal(0, 5, ts.size)
    expected = float(np.polyfit(ts - ts[0], ys, 1)[0])
    assert deriv(list(zip(ts.tolist(), ys.tolist(), strict=True))) == pytest.approx(expected, rel=1e-9)


def test_deriv_of_constant_is_zero_and_needs_two_samples() -> None:
    assert deriv([(1.0, 4.0), (2.0, 4.0), (3.0, 4.0)]) == 0.0
    assert deriv([(1.0, 4.0)]) is None


def test_avg_over_time() -> None:
    assert avg_over_time([(1.0, 1.0), (2.0, 2.0), (3.0, 6.0)]) == pytest.approx(3.0)
    assert avg_over_time([]) is None


# --- selection and staleness ----------------------------------------------------------------------------


def test_select_range_is_left_open_and_skips_staleness_markers() -> None:
    stored = [(0.0, 1.0), (10.0, 2.0), (15.0, None), (20.0, 3.0)]
    assert select_range(stored, start=0.0, end=20.0) == [(10.0, 2.0), (20.0, 3.0)]


def test_select_instant_takes_newest_sample_unless_series_ended() -> None:
    stored = [(0.0, 1.0), (10.0, 2.0), (15.0, None), (20.0, 3.0)]
    assert select_instant(stored, 12.0) == (10.0, 2.0)
    assert select_instant(stored, 17.0) is None  # the staleness marker at 15 ended the series
    assert select_instant(stored, 25.0) == (20.0, 3.0)
    assert select_instant(stored, -1.0) is None
    assert select_instant(stored, 20.0 + 300.0) is None  # beyond the 5-minute lookback
    assert select_instant(stored, 20.0 + 299.0, lookback=300.0) == (20.0, 3.0)


# --- aggregation ----------------------------------------------------------------------------------------


def test_sum_by_drops_other_labels() -> None:
    vector = {
        labels_of(stage_labels(DECODE, "w1")): 3.0,
        labels_of(stage_labels(DECODE, "w2")): 4.0,
        labels_of(stage_labels("Infer_3", "w1")): 1.0,
    }
    out = aggregate("sum", ("dataset", "operator"), vector)
    assert out == {
        (("dataset", DS), ("operator", DECODE)): 7.0,
        (("dataset", DS), ("operator", "Infer_3")): 1.0,
    }


def test_avg_and_max_by() -> None:
    vector = {
        labels_of({"instance": "a:1", "ip": "1", "GpuIndex": "0"}): 20.0,
        labels_of({"instance": "a:1", "ip": "1", "GpuIndex": "1"}): 40.0,
        labels_of({"instance": "b:1", "ip": "1", "GpuIndex": "0"}): math.nan,
        labels_of({"instance": "b:1", "ip": "1", "GpuIndex": "1"}): 5.0,
    }
    assert aggregate("avg", ("instance", "ip"), vector)[(("instance", "a:1"), ("ip", "1"))] == 30.0
    assert math.isnan(aggregate("avg", ("instance", "ip"), vector)[(("instance", "b:1"), ("ip", "1"))])
    # max ignores a NaN beside a number, as Prometheus does.
    assert aggregate("max", ("instance",), vector)[(("instance", "b:1"),)] == 5.0


def test_label_missing_or_empty_groups_together() -> None:
    vector = {labels_of({"NodeType": "", "x": "1"}): 1.0, labels_of({"x": "2"}): 2.0}
    assert aggregate("sum", ("NodeType",), vector) == {(): 3.0}


# --- the store ------------------------------------------------------------------------------------------


def test_store_series_that_disappear_or_fail_end_at_once() -> None:
    store = SeriesStore(retention=60.0)
    queued = key("ray_data_operator_queued_blocks", **stage_labels(DECODE))
    infer = key("ray_data_operator_queued_blocks", **stage_labels("Infer_3"))
    store.ingest("a:1", 0.0, {queued: 5.0, infer: 1.0})
    store.ingest("a:1", 1.0, {queued: 6.0})
    backlog = evaluate_template("stage_backlog", store.series, at=1.5, window=60.0)
    assert [dict(s.labels)["operator"] for s in backlog.samples] == [DECODE]

    store.mark_stale("a:1", 2.0)
    assert evaluate_template("stage_backlog", store.series, at=2.5, window=60.0).samples == ()
    # The range functions still see what was scraped before the failure.
    slots = evaluate_template("stage_arrival", store.series, at=2.5, window=60.0)
    assert slots.error is None


def test_store_refuses_out_of_order_samples() -> None:
    store = SeriesStore(retention=60.0)
    k = key("autoscaler_active_nodes", NodeType="cpu4", instance="a:1")
    store.ingest("a:1", 10.0, {k: 1.0})
    store.ingest("a:1", 5.0, {k: 2.0})
    assert list(store.series["autoscaler_active_nodes"][k[1]]) == [(10.0, 1.0)]


def test_store_memory_is_bounded() -> None:
    store = SeriesStore(retention=30.0)
    for t in range(1000):
        # A new WorkerId every 100 rounds: old series must be forgotten, not pile up.
        k = key("ray_data_num_tasks_running", **stage_labels(DECODE, worker=f"w{t // 100}"))
        store.ingest("a:1", float(t), {k: float(t)})
        store.prune(float(t))
    assert store.sample_count() <= 31 + 1
    assert len(store.series["ray_data_num_tasks_running"]) == 1


def test_store_keeps_newest_sample_for_freshness() -> None:
    store = SeriesStore(retention=10.0)
    k = key("ray_data_operator_queued_blocks", **stage_labels(DECODE))
    store.ingest("a:1", 100.0, {k: 5.0})
    store.prune(200.0)
    fresh = evaluate_template("stage_freshness", store.series, at=200.0, window=10.0)
    assert [s.value.get() for s in fresh.samples] == [100.0]


# --- templates end to end, through build_snapshot -------------------------------------------------------


def cluster_store(times: list[float], *, decode_queue: Mapping[float, float] | None = None) -> SeriesStore:
    """Head exporter a:1 with Ray Data metrics, autoscaler b:2, two worker exporters sharing one ip."""
    store = SeriesStore(retention=120.0)
    for i, t in enumerate(times):
        head: dict[SeriesKey, float] = {}
        for op, processed, queued, running in (
            (DECODE, 4.0 * i, 100.0 + i, 2.0),
            ("Infer_3", 2.0 * i, 0.0, 1.0),
        ):
            if op == DECODE and decode_queue is not None:
                queued = decode_queue[t]
            labels = stage_labels(op)
            head[key("ray_data_num_task_inputs_processed", **labels)] = processed
            head[key("ray_data_operator_queued_blocks", **labels)] = queued
            head[key("ray_data_num_tasks_running", **labels)] = running
        head[key("ray_node_cpu_utilization", ip="10.0.0.1", instance="a:1")] = 50.0
        store.ingest("a:1", t, head)
        store.ingest(
            "b:2",
            t,
            {
                key("autoscaler_active_nodes", NodeType="cpu4", instance="b:2"): 1.0,
                key("autoscaler_active_nodes", NodeType="gpu1", instance="b:2"): 1.0,
                key("autoscaler_pending_nodes", NodeType="gpu1", instance="b:2"): 0.0,
            },
        )
        for worker in ("c:3", "d:4"):
            store.ingest(worker, t, {key("ray_node_cpu_utilization", ip="10.0.0.2", instance=worker): 25.0})
    return store


def test_snapshot_from_evaluated_templates() -> None:
    times = [float(t) for t in range(0, 61, 5)]
    store = cluster_store(times)
    results = {
        n: evaluate_template(n, store.series, at=60.0, window=60.0)
        for n in OBSERVE_TEMPLATES
        if n != "targets_down"
    }
    results["targets_down"] = QueryResult(query="up == 0")  # every exporter answered
    config = parse_config(EXAMPLE_CONFIG)
    snapshot = build_snapshot(config, 60.0, results)

    assert snapshot.errors == ()
    decode = snapshot.stage("decode")
    assert decode.backlog.get() == 112.0
    # 4 blocks per 5 s round = 0.8/s; the series starts at 0, so there is nothing to extrapolate before it.
    assert decode.throughput.get() == pytest.approx(0.8)
    # Arrival = throughput + the queue's growth (1 block per 5 s).
    assert decode.arrival_rate.get() == pytest.approx(0.8 + 0.2)
    assert decode.slots_busy.get() == 2.0
    assert dict(snapshot.node_counts) == {"cpu4": 1, "gpu1": 1}
    # Same ip, different exporters: the instance label keeps the two workers apart.
    assert len(snapshot.nodes) == 3


def test_stage_goes_stale_when_scraping_stopped() -> None:
    store = cluster_store([0.0, 5.0, 10.0])
    config = parse_config(EXAMPLE_CONFIG)
    results = {n: evaluate_template(n, store.series, at=100.0, window=60.0) for n in OBSERVE_TEMPLATES}
    freshness = {dict(s.labels)["operator"]: s.value.get() for s in results["stage_freshness"].samples}
    assert freshness[DECODE] == 90.0
    decode = build_snapshot(config, 100.0, results).stage("decode")
    assert not decode.backlog.known
    assert "stale" in decode.backlog.reason


def test_nan_sample_is_unknown_not_zero() -> None:
    times = [0.0, 5.0, 10.0]
    store = cluster_store(times, decode_queue={0.0: 1.0, 5.0: 2.0, 10.0: math.nan})
    backlog = evaluate_template("stage_backlog", store.series, at=10.0, window=60.0)
    by_op = {dict(s.labels)["operator"]: s.value for s in backlog.samples}
    assert not by_op[DECODE].known
    assert "NaN" in by_op[DECODE].reason
    assert by_op["Infer_3"].get() == 0.0


def test_rates_need_two_samples_in_the_window() -> None:
    store = cluster_store([0.0])
    throughput = evaluate_template("stage_throughput", store.series, at=1.0, window=60.0)
    assert throughput.error is None
    assert throughput.samples == ()  # absent, so observe reports it unknown


def test_query_text_names_the_window() -> None:
    result = evaluate_template("stage_throughput", {}, at=0.0, window=30.0, window_text="30s")
    assert result.query == TEMPLATES["stage_throughput"].replace("{window}", "30s")


# --- parsing --------------------------------------------------------------------------------------------

EXPOSITION = """\
# HELP autoscaler_active_nodes Number of nodes in the cluster.
# TYPE autoscaler_active_nodes gauge
autoscaler_active_nodes{NodeType="cpu4",SessionName="s",instance="exported",empty=""} 1.0
autoscaler_active_nodes{NodeType="cpu4",SessionName="s",instance="exported",empty=""} 7.0
# TYPE ray_other gauge
ray_other 3
"""


def test_parse_exposition_adds_target_labels() -> None:
    out = parse_exposition(
        EXPOSITION, wanted={"autoscaler_active_nodes"}, target_labels={"instance": "h:1", "job": "ray"}
    )
    labels: Labels = (
        ("NodeType", "cpu4"),
        ("SessionName", "s"),
        ("exported_instance", "exported"),
        ("instance", "h:1"),
        ("job", "ray"),
    )
    assert out == {("autoscaler_active_nodes", labels): 1.0}


@pytest.mark.parametrize("garbage", ["<html><body>Bad gateway</body></html>", "hello world", '{"a": 1}'])
def test_parse_exposition_rejects_garbage(garbage: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 — the parser's error type varies with the garbage
        parse_exposition(garbage, wanted=set())


def test_parse_service_discovery_as_ray_writes_it() -> None:
    data = [{"labels": {"job": "ray", "__meta_x": "y"}, "targets": ["10.0.0.1:8080", "10.0.0.1:44217"]}]
    targets = parse_service_discovery(data, source="sd.json")
    assert [t.address for t in targets] == ["10.0.0.1:8080", "10.0.0.1:44217"]
    assert dict(targets[0].labels) == {"job": "ray"}


@pytest.mark.parametrize(
    "data",
    [
        {"targets": []},
        [{"labels": {}}],
        [{"targets": ["no-port"]}],
        [{"targets": [1]}],
        [{"targets": [], "labels": 1}],
        [{"targets": ["h:99999"]}],
        [{"targets": ["h:0"]}],
    ],
)
def test_parse_service_discovery_rejects_other_shapes(data: object) -> None:
    with pytest.raises(DiscoveryError, match=r"sd\.json"):
        parse_service_discovery(data, source="sd.json")
