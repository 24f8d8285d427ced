"""build_snapshot from hand-made query results: every way a reading becomes unknown, and how it is not 0."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from autoscaler.core.config import EXAMPLE_CONFIG, Config, PrometheusConfig, parse_config
from autoscaler.core.observe import OBSERVE_TEMPLATES, attribute_slots, build_snapshot, slots_per_node
from autoscaler.core.queries import (
    TEMPLATES,
    PrometheusConfigError,
    QueryResult,
    Sample,
    make_sample,
    render_queries,
)
from autoscaler.types import NodeShape, Reading, frozen_map

DS = "dataset_0"
DECODE = "MapBatches(decode)_2"
INFER = "MapBatches(Infer)_3"
NOW = 1_000_000.0


def config(**changes: Any) -> Config:
    base = parse_config(EXAMPLE_CONFIG)
    return base.model_copy(update=changes) if changes else base


def stage(operator: str, value: float | Reading, dataset: str = DS) -> Sample:
    return make_sample({"dataset": dataset, "operator": operator}, value, NOW)


def node_type(name: str, value: float | Reading) -> Sample:
    return make_sample({"NodeType": name}, value, NOW)


def node(instance: str, value: float | Reading, ip: str = "192.0.2.2", **labels: str) -> Sample:
    return make_sample({"instance": instance, "ip": ip, **labels}, value, NOW)


def ok(*samples: Sample) -> QueryResult:
    return QueryResult(query="q", samples=samples)


def healthy(**overrides: QueryResult) -> dict[str, QueryResult]:
    """A consistent tick: decode backed up, infer keeping up, one node of each shape plus the head."""
    results = {
        "stage_backlog": ok(stage("Input_0", 0), stage(DECODE, 148), stage(INFER, 2)),
        "stage_throughput": ok(stage("Input_0", 0), stage(DECODE, 10.0), stage(INFER, 9.5)),
        "stage_arrival": ok(stage("Input_0", 0), stage(DECODE, 12.0), stage(INFER, 10.0)),
        "stage_slots": ok(stage("Input_0", 0), stage(DECODE, 3), stage(INFER, 1)),
        "stage_freshness": ok(stage("Input_0", 1.5), stage(DECODE, 1.5), stage(INFER, 2.0)),
        "nodes_active": ok(node_type("cpu4", 1), node_type("gpu1", 1), node_type("ray.head.default", 1)),
        "nodes_pending": ok(node_type("cpu4", 0), node_type("gpu1", 2), node_type("ray.head.default", 0)),
        "node_cpu_utilization": ok(node("127.0.0.1:1", 40.0), node("127.0.0.1:2", 80.0)),
        "node_gpu_utilization": ok(node("127.0.0.1:2", 95.0)),
        "targets_down": ok(),
    }
    results.update(overrides)
    return results


def failed(error: str = "bad_data: parse error") -> QueryResult:
    return QueryResult.failed("q", error)


# --- the healthy path -------------------------------------------------------------------------------------


def test_healthy_tick_is_complete() -> None:
    snap = build_snapshot(config(), NOW, healthy())

    assert snap.errors == ()
    assert snap.inputs_complete
    assert snap.time == NOW
    assert snap.shapes == config().node_shapes()
    assert [s.name for s in snap.stages] == ["decode", "infer"]
    decode = snap.stage("decode")
    assert decode.backlog == Reading(148.0)
    assert decode.throughput == Reading(10.0)
    assert decode.arrival_rate == Reading(12.0)
    assert decode.slots_busy == Reading(3.0)
    assert dict(snap.node_counts) == {"cpu4": 1, "gpu1": 1}
    assert dict(snap.pending_counts) == {"cpu4": 0, "gpu1": 2}
    assert snap.counts_including_pending() == {"cpu4": 1, "gpu1": 3}


def test_every_observe_template_exists() -> None:
    assert set(OBSERVE_TEMPLATES) <= set(TEMPLATES)


def test_series_order_does_not_change_the_snapshot() -> None:
    forward = healthy(stage_backlog=ok(stage(DECODE, 1, "a"), stage(DECODE, 2, "b"), stage(INFER, 3)))
    backward = healthy(stage_backlog=ok(stage(INFER, 3), stage(DECODE, 2, "b"), stage(DECODE, 1, "a")))
    assert build_snapshot(config(), NOW, forward) == build_snapshot(config(), NOW, backward)


# --- unknown readings -------------------------------------------------------------------------------------


def test_failed_query_makes_that_reading_unknown_for_every_stage() -> None:
    snap = build_snapshot(config(), NOW, healthy(stage_throughput=failed("timeout: query timed out")))

    for name in ("decode", "infer"):
        st = snap.stage(name)
        assert st.throughput.value is None
        assert "stage_throughput query failed: timeout: query timed out" in st.throughput.reason
        assert st.backlog.known and st.slots_busy.known
    assert any("stage_throughput query failed" in e for e in snap.errors)
    assert not snap.inputs_complete


def test_all_stage_queries_failed_keeps_configured_stages_visible_as_unknown() -> None:
    results = healthy(
        **{n: failed("connection refused") for n in OBSERVE_TEMPLATES if n.startswith("stage_")}
    )
    snap = build_snapshot(config(), NOW, results)

    assert [s.name for s in snap.stages] == ["decode", "infer"]
    for st in snap.stages:
        assert not st.complete
        assert len(st.unknown_reasons()) == 4


def test_template_not_queried_is_an_error_not_a_zero() -> None:
    results = healthy()
    del results["stage_slots"]
    snap = build_snapshot(config(), NOW, results)

    assert snap.stage("decode").slots_busy.value is None
    assert "not queried" in snap.stage("decode").slots_busy.reason
    assert any("stage_slots" in e for e in snap.errors)


def test_stage_missing_from_one_template_is_unknown_there() -> None:
    snap = build_snapshot(config(), NOW, healthy(stage_slots=ok(stage(DECODE, 3))))

    infer = snap.stage("infer")
    assert infer.slots_busy.value is None
    assert infer.slots_busy.reason == "no series for stage 'infer' in stage_slots"
    assert infer.slots_by_shape == {}
    assert infer.backlog.known
    assert snap.stage("decode").slots_busy == Reading(3.0)
    assert any("'infer'" in e and "busy slots" in e for e in snap.errors)


def test_empty_template_answer_is_unknown_not_zero() -> None:
    snap = build_snapshot(config(), NOW, healthy(stage_throughput=ok()))

    assert snap.stage("decode").throughput.value is None
    assert "no series" in snap.stage("decode").throughput.reason


def test_nan_sample_is_unknown() -> None:
    nan = Reading.unknown("Prometheus returned NaN")
    snap = build_snapshot(config(), NOW, healthy(stage_backlog=ok(stage(DECODE, nan), stage(INFER, 2))))

    decode = snap.stage("decode")
    assert decode.backlog.value is None
    assert "NaN" in decode.backlog.reason
    assert snap.stage("infer").backlog == Reading(2.0)
    assert any("decode" in e and "NaN" in e for e in snap.errors)


def test_one_unknown_dataset_makes_the_stage_sum_unknown() -> None:
    backlog = ok(stage(DECODE, 100, "a"), stage(DECODE, Reading.unknown("Prometheus returned +Inf"), "b"))
    snap = build_snapshot(config(), NOW, healthy(stage_backlog=backlog, stage_freshness=ok()))

    assert snap.stage("decode").backlog.value is None
    assert "+Inf" in snap.stage("decode").backlog.reason


def test_stale_stage_has_every_reading_unknown() -> None:
    fresh = ok(stage(DECODE, 75.0), stage(INFER, 2.0))
    snap = build_snapshot(config(), NOW, healthy(stage_freshness=fresh))

    decode = snap.stage("decode")
    assert not decode.backlog.known
    assert not decode.throughput.known
    assert not decode.arrival_rate.known
    assert not decode.slots_busy.known
    assert decode.backlog.reason == "stale: last sample 75 s old (staleness_seconds 60)"
    assert snap.stage("infer").complete
    assert any("'decode'" in e and "stale" in e for e in snap.errors)


def test_staleness_threshold_comes_from_config() -> None:
    cfg = config(prometheus=PrometheusConfig(staleness_seconds=120))
    snap = build_snapshot(cfg, NOW, healthy(stage_freshness=ok(stage(DECODE, 75.0), stage(INFER, 2.0))))
    assert snap.stage("decode").complete


def test_one_stale_dataset_makes_the_stage_stale() -> None:
    results = healthy(
        stage_backlog=ok(stage(DECODE, 5, "a"), stage(DECODE, 7, "b"), stage(INFER, 0)),
        stage_freshness=ok(stage(DECODE, 1, "a"), stage(DECODE, 300, "b"), stage(INFER, 1)),
    )
    snap = build_snapshot(config(), NOW, results)
    assert "stale: last sample 300 s old" in snap.stage("decode").backlog.reason


def test_failed_freshness_query_keeps_readings_but_reports_it() -> None:
    snap = build_snapshot(config(), NOW, healthy(stage_freshness=failed()))

    assert snap.stage("decode").complete
    assert any("stage_freshness query failed" in e for e in snap.errors)
    assert not snap.inputs_complete


@pytest.mark.parametrize(
    ("template", "attribute", "word"),
    [
        ("stage_backlog", "backlog", "backlog"),
        ("stage_throughput", "throughput", "throughput"),
        ("stage_slots", "slots_busy", "busy slots"),
    ],
)
def test_negative_values_are_contradictions(template: str, attribute: str, word: str) -> None:
    snap = build_snapshot(config(), NOW, healthy(**{template: ok(stage(DECODE, -4), stage(INFER, 1))}))

    reading: Reading = getattr(snap.stage("decode"), attribute)
    assert reading.value is None
    assert f"negative {word} (-4)" in reading.reason
    assert any("'decode'" in e and "negative" in e for e in snap.errors)


def test_arrival_below_zero_is_clamped_not_unknown() -> None:
    # The queue drains faster than work arrives: throughput + deriv < 0 means ~nothing is arriving.
    snap = build_snapshot(config(), NOW, healthy(stage_arrival=ok(stage(DECODE, -3.5), stage(INFER, 1))))

    assert snap.stage("decode").arrival_rate == Reading(0.0)
    assert snap.errors == ()


def test_unknown_arrival_is_not_clamped() -> None:
    nan = Reading.unknown("Prometheus returned NaN")
    snap = build_snapshot(config(), NOW, healthy(stage_arrival=ok(stage(DECODE, nan), stage(INFER, 1))))
    assert snap.stage("decode").arrival_rate.value is None


def test_series_without_operator_label_are_reported() -> None:
    stray = make_sample({"dataset": DS}, 5.0)
    snap = build_snapshot(config(), NOW, healthy(stage_backlog=ok(stray, stage(DECODE, 1), stage(INFER, 1))))
    assert any("without an 'operator' label" in e for e in snap.errors)


# --- stage mapping ----------------------------------------------------------------------------------------


def test_stage_is_summed_across_datasets() -> None:
    results = healthy(
        stage_backlog=ok(stage(DECODE, 100, "a"), stage(DECODE, 50, "b"), stage(INFER, 0)),
        stage_slots=ok(stage(DECODE, 2, "a"), stage(DECODE, 1, "b"), stage(INFER, 1)),
    )
    snap = build_snapshot(config(), NOW, results)
    assert snap.stage("decode").backlog == Reading(150.0)
    assert snap.stage("decode").slots_busy == Reading(3.0)


def test_ignored_operators_are_not_stages() -> None:
    snap = build_snapshot(config(), NOW, healthy())
    assert "Input_0" not in {s.name for s in snap.stages}

    cfg = config(ignore_operators=r"Infer")
    names = {s.name for s in build_snapshot(cfg, NOW, healthy()).stages}
    assert "infer" not in names
    assert "Input_0" in names


def test_unmatched_operator_is_a_stage_named_by_its_label() -> None:
    read = "ReadRange_1"
    results = healthy(
        **{
            name: ok(*healthy()[name].samples, stage(read, 0.0))
            for name in (
                "stage_backlog",
                "stage_throughput",
                "stage_arrival",
                "stage_slots",
                "stage_freshness",
            )
        }
    )
    snap = build_snapshot(config(), NOW, results)

    assert [s.name for s in snap.stages] == ["decode", "infer", read]
    assert snap.stage(read).backlog == Reading(0.0)
    # Unprofiled stages use default_stage_resources ({CPU: 1}), which fit on both shapes.
    assert set(snap.stage(read).slots_by_shape) == {"cpu4", "gpu1"}


def test_profile_dataset_pattern_restricts_the_match() -> None:
    cfg = Config.model_validate(
        {
            "shapes": [{"name": "cpu4", "resources": {"CPU": 4}, "price_per_hour": 0.2}],
            "stages": [{"name": "train_decode", "operator": r"decode", "dataset": r"^train"}],
        }
    )
    results = healthy(
        stage_backlog=ok(stage(DECODE, 5, "train_7"), stage(DECODE, 9, "eval_3")),
        stage_throughput=ok(stage(DECODE, 1, "train_7"), stage(DECODE, 1, "eval_3")),
        stage_arrival=ok(stage(DECODE, 1, "train_7"), stage(DECODE, 1, "eval_3")),
        stage_slots=ok(stage(DECODE, 1, "train_7"), stage(DECODE, 1, "eval_3")),
        stage_freshness=ok(stage(DECODE, 1, "train_7"), stage(DECODE, 1, "eval_3")),
    )
    snap = build_snapshot(cfg, NOW, results)

    assert snap.stage("train_decode").backlog == Reading(5.0)
    assert snap.stage(DECODE).backlog == Reading(9.0)


def test_first_matching_profile_wins() -> None:
    cfg = Config.model_validate(
        {
            "shapes": [{"name": "cpu4", "resources": {"CPU": 4}, "price_per_hour": 0.2}],
            "stages": [{"name": "first", "operator": "MapBatches"}, {"name": "second", "operator": "decode"}],
        }
    )
    only_decode = {
        n: ok(stage(DECODE, 1))
        for n in ("stage_backlog", "stage_throughput", "stage_arrival", "stage_slots", "stage_freshness")
    }
    snap = build_snapshot(cfg, NOW, healthy(**only_decode))
    assert [s.name for s in snap.stages] == ["first"]


# --- slot attribution -------------------------------------------------------------------------------------

CPU4 = NodeShape("cpu4", frozen_map({"CPU": 4}), 0.2)
GPU1 = NodeShape("gpu1", frozen_map({"CPU": 2, "GPU": 1}), 1.0)
GPU4 = NodeShape("gpu4", frozen_map({"CPU": 8, "GPU": 4}), 3.0)


def test_slots_per_node() -> None:
    assert slots_per_node({"CPU": 1}, CPU4) == 4
    assert slots_per_node({"CPU": 1, "GPU": 1}, CPU4) == 0
    assert slots_per_node({"CPU": 1, "GPU": 1}, GPU4) == 4
    assert slots_per_node({"CPU": 3, "GPU": 1}, GPU4) == 2
    assert slots_per_node({"CPU": 0.5}, GPU1) == 4
    assert slots_per_node({"CPU": 0.1}, CPU4) == 40


def test_attribution_follows_capacity_for_the_stage() -> None:
    shapes = (CPU4, GPU1, GPU4)
    counts = {"cpu4": 2, "gpu1": 1, "gpu4": 0}
    # cpu4: 2 nodes × 4 slots = 8, gpu1: 1 × 2 = 2, gpu4: none running.
    assert attribute_slots(10, {"CPU": 1}, shapes, counts) == {"cpu4": 8.0, "gpu1": 2.0}
    # A GPU slot only fits on the GPU shapes.
    assert attribute_slots(3, {"CPU": 1, "GPU": 1}, shapes, counts) == {"gpu1": 3.0}
    assert attribute_slots(3, {"CPU": 1, "GPU": 1}, shapes, {"cpu4": 5}) == {}


def test_attribution_sums_to_busy_slots() -> None:
    split = attribute_slots(7, {"CPU": 1}, (CPU4, GPU1, GPU4), {"cpu4": 3, "gpu1": 2, "gpu4": 1})
    assert math.isclose(sum(split.values()), 7)


def test_snapshot_attributes_busy_slots() -> None:
    snap = build_snapshot(config(), NOW, healthy())
    # decode needs {CPU: 1}: cpu4 hosts 4, gpu1 hosts 2 → 3 busy slots split 2 : 1.
    assert dict(snap.stage("decode").slots_by_shape) == pytest.approx({"cpu4": 2.0, "gpu1": 1.0})
    assert dict(snap.stage("infer").slots_by_shape) == {"gpu1": 1.0}


def test_no_attribution_without_node_counts() -> None:
    snap = build_snapshot(config(), NOW, healthy(nodes_active=failed()))
    assert snap.stage("decode").slots_busy.known
    assert snap.stage("decode").slots_by_shape == {}


# --- node counts ------------------------------------------------------------------------------------------


def test_configured_shape_without_series_counts_zero_when_others_answered() -> None:
    active = ok(node_type("gpu1", 2), node_type("ray.head.default", 1))
    snap = build_snapshot(config(), NOW, healthy(nodes_active=active))
    assert dict(snap.node_counts) == {"cpu4": 0, "gpu1": 2}
    assert snap.errors == ()


def test_failed_node_count_query_leaves_counts_empty_and_says_so() -> None:
    snap = build_snapshot(config(), NOW, healthy(nodes_active=failed("connection refused")))
    assert dict(snap.node_counts) == {}
    assert any("nodes_active query failed: connection refused" in e for e in snap.errors)


def test_empty_node_count_answer_is_not_zero() -> None:
    snap = build_snapshot(config(), NOW, healthy(nodes_pending=ok()))
    assert dict(snap.pending_counts) == {}
    assert any("nodes_pending" in e and "no series" in e for e in snap.errors)


def test_pending_counts() -> None:
    pending = ok(node_type("cpu4", 3), node_type("ray.head.default", 0))
    snap = build_snapshot(config(), NOW, healthy(nodes_pending=pending))
    assert dict(snap.pending_counts) == {"cpu4": 3, "gpu1": 0}


@pytest.mark.parametrize(
    "value", [Reading.unknown("Prometheus returned NaN"), Reading(-1.0), Reading(1.5)], ids=str
)
def test_bad_node_count_is_left_out_and_reported(value: Reading) -> None:
    active = ok(node_type("cpu4", value), node_type("gpu1", 1))
    snap = build_snapshot(config(), NOW, healthy(nodes_active=active))
    assert dict(snap.node_counts) == {"gpu1": 1}
    assert any("'cpu4'" in e for e in snap.errors)


def test_duplicate_node_type_series_are_reported() -> None:
    active = ok(node_type("cpu4", 1), node_type("cpu4", 2), node_type("gpu1", 1))
    snap = build_snapshot(config(), NOW, healthy(nodes_active=active))
    assert "cpu4" not in snap.node_counts
    assert any("several series" in e for e in snap.errors)


# --- nodes ------------------------------------------------------------------------------------------------


def test_nodes_sharing_an_ip_are_told_apart_by_instance() -> None:
    snap = build_snapshot(config(), NOW, healthy())

    assert [n.node_id for n in snap.nodes] == ["127.0.0.1:1/192.0.2.2", "127.0.0.1:2/192.0.2.2"]
    first, second = snap.nodes
    assert first.cpu_utilization == Reading(40.0)
    assert first.gpu_utilization.value is None
    assert "no node_gpu_utilization series" in first.gpu_utilization.reason
    assert second.gpu_utilization == Reading(95.0)
    assert all(n.shape == "" for n in snap.nodes)


def test_node_shape_from_a_relabelled_series() -> None:
    cpu = ok(node("10.0.0.1:8080", 10.0, NodeType="cpu4"), node("10.0.0.2:8080", 10.0, NodeType="worker"))
    snap = build_snapshot(config(), NOW, healthy(node_cpu_utilization=cpu, node_gpu_utilization=ok()))
    assert [n.shape for n in snap.nodes] == ["cpu4", ""]


def test_node_utilization_out_of_range_is_unknown() -> None:
    snap = build_snapshot(config(), NOW, healthy(node_cpu_utilization=ok(node("127.0.0.1:1", 250.0))))
    assert snap.nodes[0].cpu_utilization.value is None
    assert "outside 0–100" in snap.nodes[0].cpu_utilization.reason


def test_failed_node_query_is_reported_and_readings_unknown() -> None:
    snap = build_snapshot(config(), NOW, healthy(node_gpu_utilization=failed("HTTP 503")))
    assert all(not n.gpu_utilization.known for n in snap.nodes)
    assert "node_gpu_utilization query failed" in snap.nodes[0].gpu_utilization.reason
    assert any("node_gpu_utilization query failed" in e for e in snap.errors)


# --- templates --------------------------------------------------------------------------------------------


def test_window_is_substituted_and_label_braces_survive() -> None:
    override = 'sum by (dataset, operator) (rate(x{job="ray"}[{window}]))'
    rendered = render_queries(PrometheusConfig(rate_window="30s", queries={"stage_throughput": override}))

    assert rendered["stage_throughput"] == 'sum by (dataset, operator) (rate(x{job="ray"}[30s]))'
    assert "[30s]" in rendered["stage_arrival"]
    assert "{window}" not in "".join(rendered.values())
    assert set(rendered) == set(TEMPLATES)


def test_unknown_override_lists_valid_names() -> None:
    with pytest.raises(PrometheusConfigError) as err:
        render_queries(PrometheusConfig(queries={"stage_backlgo": "x"}))
    message = str(err.value)
    assert "stage_backlgo" in message
    assert "stage_backlog" in message and "nodes_pending" in message


def test_empty_override_is_rejected() -> None:
    with pytest.raises(PrometheusConfigError, match="empty"):
        render_queries(PrometheusConfig(queries={"stage_backlog": "  "}))


def test_default_templates_keep_the_labels_observe_needs() -> None:
    for name, promql in TEMPLATES.items():
        if name.startswith("stage_"):
            assert "by (dataset, operator)" in promql, name
        if name.startswith("node_"):
            assert "by (instance, ip)" in promql, name


def _readings(snapshot_stage: Any) -> Mapping[str, Reading]:
    return {
        "backlog": snapshot_stage.backlog,
        "throughput": snapshot_stage.throughput,
        "arrival": snapshot_stage.arrival_rate,
        "slots": snapshot_stage.slots_busy,
    }


def test_no_path_turns_missing_data_into_zero() -> None:
    """Whatever goes wrong, an unknown reading never carries a value."""
    broken = [
        healthy(stage_backlog=failed()),
        healthy(stage_backlog=ok()),
        healthy(stage_freshness=ok(stage(DECODE, 1e6), stage(INFER, 1e6))),
        healthy(stage_slots=ok(stage(DECODE, Reading.unknown("NaN")))),
    ]
    for results in broken:
        snap = build_snapshot(config(), NOW, results)
        for st in snap.stages:
            for reading in _readings(st).values():
                assert reading.known or (reading.value is None and reading.reason)
        assert snap.errors


# --- targets down -----------------------------------------------------------------------------------------


def test_a_target_down_holds_instead_of_reading_as_no_work() -> None:
    down = QueryResult(query="up == 0", samples=(make_sample({"instance": "10.0.0.5:8080"}, 0.0),))
    snap = build_snapshot(config(), NOW, healthy(targets_down=down))
    assert not snap.inputs_complete
    assert any("10.0.0.5:8080" in e for e in snap.errors)


def test_unknown_target_health_holds() -> None:
    snap = build_snapshot(config(), NOW, healthy(targets_down=failed()))
    assert not snap.inputs_complete


def test_source_warnings_hold() -> None:
    warned = QueryResult(
        query="q", samples=healthy()["stage_backlog"].samples, warnings=("127.0.0.1:9: connection refused",)
    )
    snap = build_snapshot(config(), NOW, healthy(stage_backlog=warned))
    assert any("connection refused" in e for e in snap.errors)
