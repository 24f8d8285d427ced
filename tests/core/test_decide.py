from __future__ import annotations

import math

import pytest

from autoscaler.core.decide import (
    DecisionState,
    _calibration,
    _hold_band,
    _lateness,
    _requirements,
    _with_floor,
    decide,
)
from autoscaler.core.selection import SelectionProblem, StageRequirement, select_shapes
from autoscaler.core.throughput import RateEstimate, ThroughputModels
from autoscaler.testing import make_config, make_shape, make_snapshot, make_stage, make_stage_config
from autoscaler.types import StageDemand, slot_hosts
from policies.throughput import ThroughputPolicy, recent_throughput

CPU = make_shape(name="cpu4", resources={"CPU": 4.0}, price_per_hour=0.2)


def est(rate: float, eff: float = 1.0, rel: float = 0.0, source: str = "observed") -> RateEstimate:
    return RateEstimate("s", "cpu4", rate, eff, rel, 10, source)  # type: ignore[arg-type]


def test_efficiency_floor_keeps_the_rate_where_the_stage_runs() -> None:
    bad = est(10.0, eff=0.5)
    floored = _with_floor(bad, 0.95, anchor=25.0)
    assert floored.efficiency == 0.95
    assert math.isclose(floored.rate(25.0), bad.rate(25.0))
    # ... and only the extrapolation is tempered: 4x the slots now does nearly 4x the work, not 2x.
    assert floored.rate(100.0) > 3.5 * floored.rate(25.0)
    assert _with_floor(est(2.0, eff=0.98), 0.95) == est(2.0, eff=0.98)


def test_calibration_ignores_small_disagreement_and_reanchors_large_one() -> None:
    ests = {"cpu4": est(2.0)}
    close = make_stage(name="s", throughput=21.0, slots_busy=10.0, slots_by_shape={"cpu4": 10.0})
    assert _calibration(close, ests, 0.95) == 1.0
    far = make_stage(name="s", throughput=40.0, slots_busy=10.0, slots_by_shape={"cpu4": 10.0})
    assert math.isclose(_calibration(far, ests, 0.95), 2.0 / 1.15)
    idle = make_stage(name="s", throughput=0.0, slots_busy=0.0)
    assert _calibration(idle, ests, 0.95) == 1.0
    assert _calibration(None, ests, 0.95) == 1.0


def test_requirements_charge_uncertainty_and_correct_priors_by_measured_bias() -> None:
    gpu = make_shape(name="gpu", resources={"CPU": 8.0, "GPU": 1.0}, price_per_hour=1.0)
    config = make_config(
        shapes=[CPU, gpu],
        stages=[make_stage_config(name="s", prior_rate={"cpu4": 2.4, "gpu": 2.4})],
    )
    estimates = {
        "s": {
            "cpu4": RateEstimate("s", "cpu4", 1.8, 1.0, 0.05, 50, "observed"),
            "gpu": RateEstimate("s", "gpu", 2.4, 1.0, 0.5, 0, "prior"),
        }
    }
    (req,) = _requirements((StageDemand("s", 100.0, "x"),), estimates, config)
    assert math.isclose(req.per_slot_rate["cpu4"], 1.8)
    # The prior was 33% optimistic where measured, so the unmeasured shape's prior is corrected too, and
    # its wide uncertainty makes it the last choice.
    assert math.isclose(req.per_slot_rate["gpu"], 2.4 * (1.8 / 2.4) * 1.05 / 1.5)


def _problem(target: float, current: dict[str, int]) -> tuple[SelectionProblem, dict[str, int]]:
    req = StageRequirement(
        name="s", target_rate=target, slot_resources={"CPU": 1.0}, per_slot_rate={"cpu4": 1.0}
    )
    return SelectionProblem(shapes=(CPU,), stages=(req,), max_nodes=100, budget_per_hour=math.inf), current


@pytest.mark.parametrize(
    ("target", "current", "expected"),
    [
        (30.0, {"cpu4": 10}, 10),  # 40 slots: serves 30 × 1.5 = 45? no → keep all 10
        (20.0, {"cpu4": 10}, 5),  # 40 slots serve 20 × 1.5 = 30: clearly too big → the plan's 5
    ],
)
def test_hold_band_keeps_nodes_unless_clearly_too_many(
    target: float, current: dict[str, int], expected: int
) -> None:
    config = make_config(shapes=[CPU])
    problem, cur = _problem(target, current)
    sel = select_shapes(problem)
    assert sel.counts["cpu4"] < cur["cpu4"]
    assert _hold_band(problem, sel, cur, config).counts["cpu4"] == expected


def test_hold_band_zero_follows_every_drop() -> None:
    config = make_config(shapes=[CPU]).model_copy(
        update={"targets": make_config().targets.model_copy(update={"scale_down_deadband": 0.0})}
    )
    problem, cur = _problem(30.0, {"cpu4": 10})
    sel = select_shapes(problem)
    assert _hold_band(problem, sel, cur, config) is sel


def test_decide_holds_capacity_within_the_band_and_sheds_beyond_it() -> None:
    config = make_config(shapes=[CPU], stages=[make_stage_config(name="s", prior_rate={"cpu4": 1.0})])

    def plan(rate: float) -> int:
        snap = make_snapshot(
            time=100.0,
            config=config,
            node_counts={"cpu4": 10},
            stages=[make_stage(name="s", throughput=rate, slots_busy=rate, slots_by_shape={"cpu4": rate})],
        )
        d = decide(snap, config, ThroughputModels(), ThroughputPolicy(), DecisionState())
        return d.plan.target("cpu4")

    assert plan(25.0) == 10  # 25/s × 1.2 = 30 slots (8 nodes), but 30 × 1.5 = 45 > 40 slots: kept
    assert plan(20.0) == 8  # 24 slots, 36 with the band ≤ 40: shed, 2 per tick (window 0 in make_config)


def test_a_stage_that_is_behind_discounts_shapes_that_boot_later() -> None:
    fast = make_shape(name="fast", resources={"CPU": 16.0}, price_per_hour=0.7, launch_seconds=90.0)
    slow = make_shape(name="slow", resources={"CPU": 48.0}, price_per_hour=2.0, launch_seconds=180.0)
    shapes = {"fast": fast, "slow": slow}
    ests = {"fast": est(2.0), "slow": est(2.0)}
    behind = make_stage(name="s", backlog=5000.0, throughput=100.0, arrival_rate=300.0)
    # Drain target 120 s: a slot booting 90 s after the fastest one works 30 of those 120 s.
    assert _lateness(behind, ests, shapes, 120.0) == {"fast": 1.0, "slow": 0.25}
    assert _lateness(behind, ests, shapes, 360.0) == {"fast": 1.0, "slow": 0.75}
    # A stage keeping up (queue under 10 s of its input) chooses by price and rate alone.
    keeping_up = make_stage(name="s", backlog=500.0, throughput=100.0, arrival_rate=100.0)
    assert _lateness(keeping_up, ests, shapes, 120.0) == {}


def test_while_nodes_boot_more_are_bought_only_beyond_the_headroom() -> None:
    config = make_config(shapes=[CPU], stages=[make_stage_config(name="s", prior_rate={"cpu4": 1.0})])

    def plan(rate: float, pending: int) -> int:
        snap = make_snapshot(
            time=100.0,
            config=config,
            node_counts={"cpu4": 10 - pending},
            pending_counts={"cpu4": pending},
            stages=[make_stage(name="s", throughput=rate, slots_busy=rate, slots_by_shape={"cpu4": rate})],
        )
        d = decide(snap, config, ThroughputModels(), ThroughputPolicy(), DecisionState())
        return d.plan.target("cpu4")

    # 10 nodes (40 slots), 6 of them booting. 38/s needs 38 × 1.2 = 45.6 slots: more than the 40, but the
    # 40 serve 38 with 5% to spare — within the headroom, so nothing more is bought while nodes boot ...
    assert plan(38.0, pending=6) == 10
    # ... while with every node up the usual deadband (half the headroom: 41.8 slots) buys the plan's 12.
    assert plan(38.0, pending=0) == 12
    # Beyond the whole headroom more is bought at once, booting or not.
    assert plan(42.0, pending=6) == 13


def test_recent_throughput_turns_a_step_into_a_number_at_the_next_decision() -> None:
    # 60 s window, steady at 100/s, then 15 s at 200/s: the windowed rate reads 125.
    assert math.isclose(recent_throughput(125.0, 100.0, 60.0, 15.0), 200.0)
    assert recent_throughput(125.0, None, 60.0, 15.0) == 125.0
    assert recent_throughput(125.0, 100.0, 60.0, 90.0) == 125.0
    assert recent_throughput(10.0, 100.0, 60.0, 15.0) == 0.0


class _Broken:
    name = "broken"

    def __init__(self, error: Exception | None = None, result: object = None) -> None:
        self.error = error
        self.result = result

    def decide(self, ctx: object) -> object:
        if self.error is not None:
            raise self.error
        return self.result


def test_a_policy_that_raises_holds_instead_of_crashing() -> None:
    from autoscaler.core.decide import DecisionState, decide
    from autoscaler.core.throughput import ThroughputModels
    from autoscaler.testing import make_config, make_nodes, make_snapshot, make_stage

    cfg = make_config(scale_down_window_seconds=0.0)
    snap = make_snapshot(
        config=cfg,
        node_counts={"cpu4": 3},
        nodes=make_nodes(shape="cpu4", count=3),
        stages=(make_stage(name="decode", backlog=0.0, throughput=0.0, slots_busy=0.0),),
    )
    for policy in (_Broken(error=RuntimeError("boom")), _Broken(result="not a decision")):
        d = decide(snap, cfg, ThroughputModels(), policy, DecisionState())  # type: ignore[arg-type]
        assert d.plan.held
        assert d.plan.targets()["cpu4"] == 3
        assert any("failed" in r for r in d.plan.reasons)


def test_slot_hosts_are_the_shapes_with_room_for_one_slot_zero_needs_ignored() -> None:
    cpu = make_shape(name="cpu4", resources={"CPU": 4})
    gpu = make_shape(name="gpu1", resources={"CPU": 1, "GPU": 1})
    hosts = slot_hosts((cpu, gpu))
    assert hosts({"CPU": 2}) == [cpu]
    assert hosts({"CPU": 1, "GPU": 1}) == [gpu]
    assert hosts({"CPU": 1, "GPU": 0}) == [cpu, gpu]
    assert hosts({"TPU": 1}) == []


def test_stage_profile_by_name_follows_a_copy_with_other_stages() -> None:
    a, b = make_stage_config(name="a"), make_stage_config(name="b")
    cfg = make_config(stages=[a, b])
    assert cfg.stage_profile("a") == a and cfg.stage_profile("missing") is None
    other = cfg.model_copy(update={"stages": [b]})
    assert other.stage_profile("b") == b and other.stage_profile("a") is None
    assert cfg.stage_profile("a") == a
