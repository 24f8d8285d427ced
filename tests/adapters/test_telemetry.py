"""Telemetry: the pure model-error function, metric values after record_tick, and health."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.adapters.telemetry import DURATION_BUCKETS, Telemetry, model_errors
from autoscaler.testing import make_shape, make_snapshot, make_stage
from autoscaler.types import Placement, Plan, ShapeChange, Snapshot, StageDemand, UnmetDemand

SHAPES = (make_shape(name="cpu4"), make_shape(name="gpu1", resources={"CPU": 8, "GPU": 1}))


def plan(
    *,
    changes: tuple[ShapeChange, ...] = (),
    placements: tuple[Placement, ...] = (),
    unmet: tuple[UnmetDemand, ...] = (),
    demands: tuple[StageDemand, ...] = (),
    held: bool = False,
    policy: str = "throughput",
) -> Plan:
    return Plan(
        time=100.0,
        policy=policy,
        changes=changes,
        placements=placements,
        unmet=unmet,
        demands=demands,
        held=held,
    )


def snapshot(*, time: float = 100.0, errors: tuple[str, ...] = (), **stages: float | None) -> Snapshot:
    return make_snapshot(
        time=time,
        shapes=SHAPES,
        node_counts={"cpu4": 2, "gpu1": 1},
        pending_counts={"gpu1": 1},
        stages=[make_stage(name=n, throughput=tp, backlog=0, slots_busy=1) for n, tp in stages.items()],
        errors=errors,
    )


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


# --- model_errors ------------------------------------------------------------------------------------


def test_model_error_sums_placements_per_stage() -> None:
    p = plan(
        placements=(
            Placement("decode", "cpu4", 4, 30.0),
            Placement("decode", "gpu1", 2, 10.0),
            Placement("infer", "gpu1", 1, 5.0),
        )
    )
    errors = model_errors(p, snapshot(decode=50.0, infer=4.0))
    assert errors == pytest.approx({"decode": 10.0 / 50.0, "infer": 1.0 / 4.0})


def test_model_error_leaves_out_what_has_no_meaningful_ratio() -> None:
    p = plan(
        placements=(
            Placement("zero", "cpu4", 1, 10.0),
            Placement("unknown", "cpu4", 1, 10.0),
            Placement("gone", "cpu4", 1, 10.0),
            Placement("ok", "cpu4", 1, 10.0),
        )
    )
    errors = model_errors(p, snapshot(zero=0.0, unknown=None, ok=10.0, unplanned=3.0))
    assert errors == {"ok": 0.0}


def test_model_error_is_pure() -> None:
    p = plan(placements=(Placement("decode", "cpu4", 1, 12.0),))
    s = snapshot(decode=10.0)
    assert model_errors(p, s) == model_errors(p, s) == pytest.approx({"decode": 0.2})


# --- record_tick -------------------------------------------------------------------------------------


def test_record_tick_sets_every_per_tick_metric() -> None:
    t = Telemetry(monotonic=Clock(), wall_clock=Clock(130.0))
    reg = t.registry
    p = plan(
        changes=(
            ShapeChange("cpu4", current=2, target=3, reason="add"),
            ShapeChange("gpu1", current=2, target=2, reason="keep"),
        ),
        placements=(Placement("decode", "cpu4", 6, 40.0),),
        unmet=(UnmetDemand("infer", target_rate=10.0, planned_rate=7.5, reason="max nodes"),),
        demands=(StageDemand("decode", 40.0, "r"), StageDemand("infer", 10.0, "r")),
        held=True,
    )
    t.record_tick(0.042, p, snapshot(decode=40.0, infer=7.0), 0.003)

    assert sample(reg, "raytide_tick_duration_seconds_count") == 1
    assert sample(reg, "raytide_tick_duration_seconds_sum") == pytest.approx(0.042)
    assert sample(reg, "raytide_tick_duration_seconds_bucket", le="0.05") == 1
    assert sample(reg, "raytide_tick_duration_seconds_bucket", le="0.025") == 0
    assert sample(reg, "raytide_policy_duration_seconds_count", policy="throughput") == 1
    assert sample(reg, "raytide_decisions_total", shape="cpu4", direction="up") == 1
    assert sample(reg, "raytide_decisions_total", shape="gpu1", direction="hold") == 1
    assert sample(reg, "raytide_nodes_target", shape="cpu4") == 3
    assert sample(reg, "raytide_nodes_current", shape="cpu4") == 2
    assert sample(reg, "raytide_nodes_current", shape="gpu1") == 1
    assert sample(reg, "raytide_nodes_pending", shape="gpu1") == 1
    assert sample(reg, "raytide_stage_unmet_demand_per_second", stage="infer") == pytest.approx(2.5)
    assert sample(reg, "raytide_stage_unmet_demand_per_second", stage="decode") == 0
    assert sample(reg, "raytide_held") == 1
    assert sample(reg, "raytide_inputs_unknown") == 0
    assert sample(reg, "raytide_last_complete_snapshot_timestamp_seconds") == 100.0
    assert sample(reg, "raytide_data_age_seconds") == pytest.approx(30.0)
    assert sample(reg, "raytide_last_tick_timestamp_seconds") == 130.0
    # No previous plan yet: nothing to compare.
    assert sample(reg, "raytide_stage_model_error_ratio", stage="decode") is None


def test_model_error_gauge_compares_the_previous_plan_with_the_next_snapshot() -> None:
    t = Telemetry()
    first = plan(placements=(Placement("decode", "cpu4", 4, 40.0),))
    t.record_tick(0.01, first, snapshot(decode=35.0), 0.001)
    t.record_tick(0.01, plan(), snapshot(decode=50.0), 0.001)
    assert sample(t.registry, "raytide_stage_model_error_ratio", stage="decode") == pytest.approx(0.2)
    # The second plan placed nothing: the stage's series goes away instead of going stale.
    t.record_tick(0.01, plan(), snapshot(decode=50.0), 0.001)
    assert sample(t.registry, "raytide_stage_model_error_ratio", stage="decode") is None


def test_unknown_inputs_keep_the_last_complete_time_and_age_grows() -> None:
    wall = Clock(100.0)
    t = Telemetry(wall_clock=wall)
    assert sample(t.registry, "raytide_data_age_seconds") == math.inf
    t.record_tick(0.01, plan(), snapshot(time=100.0, decode=1.0), 0.001)
    wall.t = 160.0
    t.record_tick(0.01, plan(), snapshot(time=160.0, errors=("prometheus down",), decode=None), 0.001)
    assert sample(t.registry, "raytide_inputs_unknown") == 1
    assert sample(t.registry, "raytide_last_complete_snapshot_timestamp_seconds") == 100.0
    assert sample(t.registry, "raytide_data_age_seconds") == pytest.approx(60.0)


def test_shapes_that_disappear_lose_their_series() -> None:
    t = Telemetry()
    t.record_tick(0.01, plan(changes=(ShapeChange("old", 1, 1, "keep"),)), snapshot(), 0.001)
    assert sample(t.registry, "raytide_nodes_target", shape="old") == 1
    t.record_tick(0.01, plan(changes=(ShapeChange("cpu4", 2, 2, "keep"),)), snapshot(), 0.001)
    assert sample(t.registry, "raytide_nodes_target", shape="old") is None
    assert sample(t.registry, "raytide_nodes_current", shape="old") is None
    assert sample(t.registry, "raytide_nodes_target", shape="cpu4") == 2


def test_counters_health_and_build_info() -> None:
    t = Telemetry(version="9.9.9")
    t.record_actuation_error("drain_refused")
    t.record_actuation_error("drain_refused")
    t.event_dropped("decisions")
    t.event_published("health")
    t.connection_changed(True)
    reg = t.registry
    assert sample(reg, "raytide_actuation_errors_total", kind="drain_refused") == 2
    assert sample(reg, "raytide_mqtt_events_dropped_total", topic="decisions") == 1
    assert sample(reg, "raytide_mqtt_events_published_total", topic="health") == 1
    assert sample(reg, "raytide_mqtt_connected") == 1
    assert sample(reg, "raytide_health_state", state="starting") == 1
    t.set_health("degraded", ["prometheus down"])
    assert sample(reg, "raytide_health_state", state="starting") == 0
    assert sample(reg, "raytide_health_state", state="degraded") == 1
    exposed = [s for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples]
    assert any(s.name == "raytide_build_info" and s.labels["version"] == "9.9.9" for s in exposed)


def test_two_instances_do_not_collide() -> None:
    a, b = Telemetry(), Telemetry()
    a.record_actuation_error("x")
    assert sample(b.registry, "raytide_actuation_errors_total", kind="x") is None


def test_duration_buckets_cover_1ms_to_10s() -> None:
    assert DURATION_BUCKETS[0] == 0.001 and DURATION_BUCKETS[-1] == 10.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


# --- health ------------------------------------------------------------------------------------------


def test_health_liveness_follows_ticks_and_readiness_needs_ok_and_known_inputs() -> None:
    mono = Clock(0.0)
    t = Telemetry(tick_interval_seconds=10.0, stale_ticks=3, monotonic=mono)
    h = t.health()
    assert h.alive and not h.ready and h.state == "starting"
    assert "input unknown: no snapshot yet" in h.reasons

    t.record_tick(0.01, plan(), snapshot(decode=1.0), 0.001)
    t.set_health("ok")
    h = t.health()
    assert h.alive and h.ready and h.reasons == ()

    t.record_tick(0.01, plan(), snapshot(errors=("gcs timeout",), decode=1.0), 0.001)
    h = t.health()
    assert h.alive and not h.ready
    assert "input unknown: gcs timeout" in h.reasons

    mono.t = 31.0
    h = t.health()
    assert not h.alive and not h.ready
    assert any(r.startswith("no tick for 31.0s") for r in h.reasons)


def test_set_health_rejects_unknown_states() -> None:
    t = Telemetry()
    with pytest.raises(ValueError, match="unknown health state"):
        t.set_health("fine")  # type: ignore[arg-type]


def test_readiness_reasons_are_bounded() -> None:
    t = Telemetry()
    t.set_health("ok")
    t.record_tick(0.01, plan(), snapshot(errors=tuple(f"e{i}" for i in range(100))), 0.001)
    reasons = t.health().reasons
    assert len(reasons) == 20
    assert reasons[-1] == "… and 81 more"
