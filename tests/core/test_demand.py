from __future__ import annotations

import math

from autoscaler.core.demand import DemandTargets, stage_demands
from autoscaler.types import Reading, StageObservation


def stage(
    name: str,
    *,
    backlog: float | None = 0.0,
    throughput: float | None = 10.0,
    arrival: float | None = 10.0,
    slots: float | None = 1.0,
    upstream: str | None = None,
) -> StageObservation:
    def r(v: float | None) -> Reading:
        return Reading.unknown("missing") if v is None else Reading.of(v)

    return StageObservation(
        name=name,
        backlog=r(backlog),
        throughput=r(throughput),
        arrival_rate=r(arrival),
        slots_busy=r(slots),
        upstream=upstream,
    )


T = DemandTargets(drain_seconds=100.0, headroom=0.0)


def test_target_is_arrival_plus_backlog_drain() -> None:
    (d,) = stage_demands((stage("a", backlog=500.0, arrival=10.0),), T)
    assert d.target_rate == 15.0
    assert not d.hold
    assert "backlog 500" in d.reason


def test_headroom_multiplies() -> None:
    (d,) = stage_demands((stage("a", arrival=10.0),), DemandTargets(drain_seconds=100.0, headroom=0.5))
    assert d.target_rate == 15.0


def test_unknown_input_holds_never_zero_demand_decision() -> None:
    (d,) = stage_demands((stage("a", backlog=None),), T)
    assert d.hold
    assert "a.backlog: missing" in d.reason


def test_upstream_catch_up_flows_downstream_in_one_step() -> None:
    up = stage("decode", backlog=1000.0, throughput=10.0, arrival=10.0)
    down = stage("infer", backlog=0.0, throughput=10.0, arrival=10.0, upstream="decode")
    d_up, d_down = stage_demands((up, down), T)
    assert d_up.target_rate == 20.0
    # decode will produce 10/s more once scaled; infer must be sized for it now, not a tick later.
    assert d_down.target_rate == 20.0
    assert "from decode" in d_down.reason


def test_selectivity_scales_upstream_extra() -> None:
    up = stage("split", backlog=1000.0, throughput=10.0, arrival=10.0)
    down = stage("infer", throughput=20.0, arrival=20.0, upstream="split")
    _, d_down = stage_demands((up, down), T)
    assert d_down.target_rate == 40.0


def test_order_of_input_is_kept_and_cycles_do_not_hang() -> None:
    a = stage("a", upstream="b")
    b = stage("b", upstream="a")
    out = stage_demands((a, b), T)
    assert [d.stage for d in out] == ["a", "b"]


def test_negative_inputs_are_clamped() -> None:
    (d,) = stage_demands((stage("a", backlog=0.0, arrival=0.0, throughput=0.0),), T)
    assert d.target_rate == 0.0


def test_upstream_draining_faster_than_planned_is_not_counted_twice() -> None:
    up = stage("decode", backlog=1000.0, throughput=10.0, arrival=10.0)
    down = stage("infer", backlog=0.0, throughput=10.0, arrival=10.0, upstream="decode")
    # infer's recent arrival shows decode draining its queue at 15/s: that is decode's queue moving down,
    # already counted, not more input: infer still needs its input plus decode's queue within the target.
    _, d_down = stage_demands((up, down), T, recent_arrival={"infer": 15.0})
    assert d_down.target_rate == 20.0
    assert "+10/s more from decode once it catches up (1e+03 queued upstream)" in d_down.reason


def test_a_downstream_stage_drains_what_is_queued_upstream_and_at_itself() -> None:
    # decode is behind (queue 500 and growing 5/s while nodes boot), infer has 300 queued: within the
    # drain target infer must process its input, its own queue and decode's (which grows meanwhile).
    up = stage("decode", backlog=500.0, throughput=10.0, arrival=15.0)
    down = stage("infer", backlog=300.0, throughput=10.0, arrival=10.0, upstream="decode")
    d_up, d_down = stage_demands((up, down), T, lead_seconds={"decode": 20.0, "infer": 20.0})
    assert d_up.target_rate == 15.0 + (500.0 + 5.0 * 20.0) / 100.0
    # input 15/s (decode's), 300 + 500 queued, and what enters but infer does not process for 20 s.
    assert math.isclose(d_down.target_rate, 15.0 + (300.0 + 500.0 + 5.0 * 20.0) / 100.0)


def test_projected_backlog_uses_the_lead_time() -> None:
    (d,) = stage_demands(
        (stage("a", backlog=100.0, throughput=10.0, arrival=10.0),),
        T,
        lead_seconds={"a": 50.0},
        recent_arrival={"a": 20.0},
    )
    # arrival 20/s; the backlog grows 10/s for 50 s more → 600 to drain in 100 s → 6/s.
    assert math.isclose(d.target_rate, 26.0)


def test_reason_names_the_projected_backlog_it_drains() -> None:
    # Queue growing 5/s, new nodes 20 s away: the drain term is for 100 + 5 x 20 = 200, as the reason says.
    st = stage("a", backlog=100.0, throughput=10.0, arrival=15.0)
    (d,) = stage_demands((st,), T, lead_seconds={"a": 20.0})
    assert d.target_rate == 15.0 + 200.0 / 100.0
    assert "backlog 100, 200 by the time new nodes land in 20 s" in d.reason
