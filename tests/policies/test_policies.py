"""Behaviour of the built-in policies, and how policies are found and loaded."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.app.plugins import PolicyLoadError, installed_policies, load_policy
from autoscaler.core.config import Config
from autoscaler.core.policy_api import PolicyDecision
from autoscaler.testing import (
    make_config,
    make_context,
    make_nodes,
    make_shape,
    make_snapshot,
    make_stage,
    make_stage_config,
    run_policy,
)
from autoscaler.types import Snapshot
from policies import ray_default
from policies.backlog import BacklogPolicy
from policies.ray_default import RayDefaultPolicy
from policies.throughput import ThroughputPolicy
from policies.utilization import UtilizationPolicy

CPU4 = make_shape(name="cpu4", resources={"CPU": 4}, price_per_hour=0.2, max_count=50)
GPU1 = make_shape(name="gpu1", resources={"CPU": 4, "GPU": 1}, price_per_hour=1.0, max_count=20)


def config(**kw: Any) -> Config:
    kw.setdefault("shapes", [CPU4, GPU1])
    kw.setdefault("max_step_down", 100)
    return make_config(**kw)


def counts(
    policy: Any, snap: Snapshot, cfg: Config, state: Mapping[str, Any] | None = None
) -> dict[str, int]:
    d: PolicyDecision = policy.decide(make_context(snap, cfg, state=state))
    assert d.target_counts is not None
    return dict(d.target_counts)


# ---------------------------------------------------------------------------------------- utilization


def test_utilization_above_target_scales_up() -> None:
    cfg = config()
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=2, cpu_utilization=90))
    assert counts(UtilizationPolicy(), snap, cfg)["cpu4"] == 3  # ceil(2 × 0.9 / 0.7)
    assert run_policy(UtilizationPolicy(), snap, cfg).plan.target("cpu4") == 3


def test_utilization_within_tolerance_holds() -> None:
    cfg = config()
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=4, cpu_utilization=75))
    d = UtilizationPolicy().decide(make_context(snap, cfg))
    assert d.target_counts == {"cpu4": 4, "gpu1": 0}
    assert any("tolerance" in r for r in d.reasons)


def test_utilization_below_target_scales_down() -> None:
    cfg = config()
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=4, cpu_utilization=20))
    assert counts(UtilizationPolicy(), snap, cfg)["cpu4"] == 2  # ceil(4 × 0.2 / 0.7)


def test_utilization_uses_gpu_utilization_for_gpu_shapes() -> None:
    cfg = config()
    snap = make_snapshot(
        config=cfg, nodes=make_nodes(shape="gpu1", count=2, cpu_utilization=5, gpu_utilization=100)
    )
    assert counts(UtilizationPolicy(target_utilization=0.5), snap, cfg)["gpu1"] == 4


def test_utilization_unknown_keeps_count_and_says_so() -> None:
    cfg = config()
    snap = make_snapshot(
        config=cfg,
        nodes=make_nodes(shape="cpu4", count=3, cpu_utilization=math.nan),
        pending_counts={"cpu4": 1},
    )
    d = UtilizationPolicy().decide(make_context(snap, cfg))
    assert d.target_counts is not None and d.target_counts["cpu4"] == 4
    assert any("unknown" in r for r in d.reasons)


def test_utilization_launching_nodes_cover_an_increase() -> None:
    cfg = config()
    snap = make_snapshot(
        config=cfg, nodes=make_nodes(shape="cpu4", count=2, cpu_utilization=90), pending_counts={"cpu4": 2}
    )
    assert counts(UtilizationPolicy(), snap, cfg)["cpu4"] == 4


def test_utilization_options_are_checked() -> None:
    with pytest.raises(ValueError, match="target_utilization"):
        UtilizationPolicy(target_utilization=70)
    with pytest.raises(ValueError, match="tolerance"):
        UtilizationPolicy(tolerance=-0.1)
    with pytest.raises(TypeError):
        UtilizationPolicy(target_utilization="high")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- backlog


def stage_cfgs() -> list[Any]:
    return [
        make_stage_config(name="decode", resources={"CPU": 1}),
        make_stage_config(name="infer", resources={"CPU": 1, "GPU": 1}),
    ]


def test_backlog_sizes_slots_from_the_queue() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(config=cfg, stages=[make_stage(name="decode", backlog=40, slots_busy=2)])
    # 40 / 4 = 10 one-CPU slots → three 4-CPU nodes.
    assert counts(BacklogPolicy(), snap, cfg) == {"cpu4": 3, "gpu1": 0}
    assert counts(BacklogPolicy(target_backlog_per_slot=10), snap, cfg) == {"cpu4": 1, "gpu1": 0}


def test_backlog_keeps_busy_slots_while_work_is_queued() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(config=cfg, stages=[make_stage(name="decode", backlog=4, slots_busy=7)])
    assert counts(BacklogPolicy(), snap, cfg)["cpu4"] == 2


def test_backlog_empty_queue_wants_nothing() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(
        config=cfg, nodes=make_nodes(shape="cpu4", count=3), stages=[make_stage(name="decode", slots_busy=3)]
    )
    assert counts(BacklogPolicy(), snap, cfg)["cpu4"] == 0


def test_backlog_gpu_stage_goes_to_a_gpu_shape() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(
        config=cfg,
        stages=[
            make_stage(name="decode", backlog=16),
            make_stage(name="infer", backlog=12, upstream="decode"),
        ],
    )
    assert counts(BacklogPolicy(), snap, cfg) == {"cpu4": 1, "gpu1": 3}


def test_backlog_picks_the_cheapest_shape_per_slot() -> None:
    big = make_shape(name="cpu16", resources={"CPU": 16}, price_per_hour=0.6)
    cfg = config(shapes=[CPU4, big], stages=stage_cfgs()[:1])
    snap = make_snapshot(config=cfg, stages=[make_stage(name="decode", backlog=40)])
    assert counts(BacklogPolicy(), snap, cfg) == {"cpu4": 0, "cpu16": 1}


def test_backlog_bin_packs_stages_sharing_a_shape() -> None:
    cfg = config(
        shapes=[CPU4],
        stages=[
            make_stage_config(name="a", resources={"CPU": 3}),
            make_stage_config(name="b", resources={"CPU": 1}),
        ],
    )
    snap = make_snapshot(
        config=cfg, stages=[make_stage(name="a", backlog=8), make_stage(name="b", backlog=8)]
    )
    # Two 3-CPU slots and two 1-CPU slots: 8 CPUs, and they pack onto two nodes (3 + 1 each).
    assert counts(BacklogPolicy(), snap, cfg) == {"cpu4": 2}


def test_backlog_respects_max_slots() -> None:
    cfg = config(stages=[make_stage_config(name="decode", max_slots=4)])
    snap = make_snapshot(config=cfg, stages=[make_stage(name="decode", backlog=400)])
    assert counts(BacklogPolicy(), snap, cfg)["cpu4"] == 1


def test_backlog_unknown_stage_keeps_its_share() -> None:
    cfg = config(stages=stage_cfgs())
    attributed = make_stage(name="decode", backlog=None, slots_busy=6, slots_by_shape={"cpu4": 6})
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=5), stages=[attributed])
    d = BacklogPolicy().decide(make_context(snap, cfg))
    assert d.target_counts is not None and d.target_counts["cpu4"] == 2
    assert any("unknown" in r for r in d.reasons)
    # Where it runs unknown too: every shape it fits keeps its count.
    nowhere = make_stage(name="decode", backlog=None, slots_busy=None)
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=5), stages=[nowhere])
    assert counts(BacklogPolicy(), snap, cfg) == {"cpu4": 5, "gpu1": 0}


def test_backlog_huge_queue_is_capped_at_max_count() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(config=cfg, stages=[make_stage(name="decode", backlog=1e12)])
    d = BacklogPolicy().decide(make_context(snap, cfg))
    assert d.target_counts is not None and d.target_counts["cpu4"] == CPU4.max_count
    assert any("max_count" in r for r in d.reasons)


def test_backlog_option_is_checked() -> None:
    with pytest.raises(ValueError):
        BacklogPolicy(target_backlog_per_slot=0)


# ----------------------------------------------------------------------------------------- ray-default


def test_ray_default_launches_for_pending_demand() -> None:
    cfg = config()
    snap = make_snapshot(config=cfg, nodes=make_nodes(shape="cpu4", count=1), pending_demand=[{"CPU": 1}] * 8)
    # The running node has room (no stage holds it), so 4 bundles fit there and 4 need one more node.
    assert counts(RayDefaultPolicy(), snap, cfg) == {"cpu4": 2, "gpu1": 0}


def test_ray_default_counts_busy_slots_as_used() -> None:
    cfg = config(stages=stage_cfgs())
    busy = make_stage(name="decode", backlog=0, throughput=1, slots_busy=4, slots_by_shape={"cpu4": 4})
    snap = make_snapshot(
        config=cfg, nodes=make_nodes(shape="cpu4", count=1), stages=[busy], pending_demand=[{"CPU": 1}] * 8
    )
    d = RayDefaultPolicy().decide(make_context(snap, cfg))
    assert d.target_counts is not None and d.target_counts["cpu4"] == 3


def test_ray_default_launches_gpu_nodes_for_gpu_demand() -> None:
    cfg = config()
    snap = make_snapshot(config=cfg, pending_demand=[{"CPU": 1, "GPU": 1}] * 3)
    assert counts(RayDefaultPolicy(), snap, cfg) == {"cpu4": 0, "gpu1": 3}


def test_ray_default_avoids_gpu_nodes_for_cpu_only_demand() -> None:
    # Without GPU avoidance these two types tie on every other term of the score, and the tie goes to the
    # name sorting last ("gpu8"): AUTOSCALER_CONSERVE_GPU_NODES is what makes Ray pick the CPU node.
    mem = make_shape(name="cpu8", resources={"CPU": 8, "memory": 32e9}, price_per_hour=0.4)
    gpu = make_shape(name="gpu8", resources={"CPU": 8, "GPU": 1}, price_per_hour=2.0)
    cfg = config(shapes=[mem, gpu])
    snap = make_snapshot(config=cfg, pending_demand=[{"CPU": 8}])
    assert counts(RayDefaultPolicy(), snap, cfg) == {"cpu8": 1, "gpu8": 0}

    demand = ray_default._demand([(((("CPU", 8.0),)), 1)])
    for shape, gpu_ok in ((mem, True), (gpu, False)):
        taken, left = ray_default._fill(shape.resources, demand)
        score = ray_default._score(shape.resources, demand, taken, left)
        assert score is not None and score[0] is gpu_ok
        assert score[1:] == (1, 0.0, 4.0)


def test_ray_default_gpu_nodes_do_take_cpu_work_when_gpu_work_is_pending() -> None:
    # A known pain of Ray's scorer: GPU avoidance looks at the whole demand, not at each bundle.
    big_gpu = make_shape(name="gpu16", resources={"CPU": 16, "GPU": 1}, price_per_hour=3.0)
    cfg = config(shapes=[CPU4, big_gpu])
    snap = make_snapshot(config=cfg, pending_demand=[{"CPU": 1, "GPU": 1}] + [{"CPU": 1}] * 15)
    assert counts(RayDefaultPolicy(), snap, cfg) == {"cpu4": 0, "gpu16": 1}


@pytest.mark.parametrize(
    ("running", "pending", "speed", "launched"),
    [
        (0, 0, 1.0, 5),  # at least AUTOSCALER_UPSCALING_INITIAL_NUM_NODES
        (1, 0, 1.0, 5),
        (10, 0, 1.0, 10),  # upscaling_speed × running
        (10, 0, 2.0, 20),
        (10, 4, 1.0, 6),  # nodes already launching count against the limit
        (3, 5, 1.0, 0),
    ],
)
def test_ray_default_caps_launches_by_upscaling_speed(
    running: int, pending: int, speed: float, launched: int
) -> None:
    cfg = config()
    busy = make_nodes(shape="cpu4", count=running)
    snap = make_snapshot(
        config=cfg,
        nodes=busy,
        pending_counts={"cpu4": pending},
        stages=[make_stage(name="s", slots_busy=None)],  # unknown usage: running nodes count as full
        pending_demand=[{"CPU": 4}] * (pending + 40),
    )
    d = RayDefaultPolicy(upscaling_speed=speed).decide(make_context(snap, cfg))
    assert d.target_counts is not None
    assert d.target_counts["cpu4"] == running + pending + launched
    assert any("upscaling_speed" in r for r in d.reasons)


def test_ray_default_removes_only_nodes_idle_past_the_timeout() -> None:
    cfg = config()
    nodes = (
        make_nodes(shape="cpu4", count=2)  # busy
        + make_nodes(shape="cpu4", count=1, idle_seconds=299.0, first=2)
        + make_nodes(shape="cpu4", count=1, idle_seconds=300.0, first=3)
        + make_nodes(shape="cpu4", count=1, idle_seconds=5000.0, first=4)
    )
    snap = make_snapshot(config=cfg, nodes=nodes)
    d = RayDefaultPolicy(idle_timeout_seconds=300).decide(make_context(snap, cfg))
    assert d.target_counts == {"cpu4": 3, "gpu1": 0}
    removed = sorted(r.split()[1] for r in d.reasons if r.startswith("remove"))
    assert removed == ["cpu4-3", "cpu4-4"]
    # Through the guardrails (no stabilization window in the kit's default config) the plan removes them.
    assert run_policy(RayDefaultPolicy(), snap, cfg).plan.target("cpu4") == 3


def test_ray_default_keeps_min_workers_most_recently_used() -> None:
    cfg = config(shapes=[make_shape(name="cpu4", resources={"CPU": 4}, min_count=2), GPU1])
    nodes = make_nodes(shape="cpu4", count=2, idle_seconds=1000.0) + make_nodes(
        shape="cpu4", count=2, idle_seconds=400.0, first=2
    )
    d = RayDefaultPolicy().decide(make_context(make_snapshot(config=cfg, nodes=nodes), cfg))
    assert d.target_counts is not None and d.target_counts["cpu4"] == 2
    assert sorted(r.split()[1] for r in d.reasons if r.startswith("remove")) == ["cpu4-0", "cpu4-1"]


def pipeline(*, busy: float, backlog: float = 100.0, throughput: float = 10.0) -> list[Any]:
    return [make_stage(name="decode", backlog=backlog, throughput=throughput, slots_busy=busy)]


def test_ray_data_requests_twice_the_throughput_and_protects_idle_nodes() -> None:
    cfg = config(stages=stage_cfgs())
    nodes = make_nodes(shape="cpu4", count=2) + make_nodes(shape="cpu4", count=2, idle_seconds=900.0, first=2)
    snap = make_snapshot(config=cfg, time=50.0, nodes=nodes, stages=pipeline(busy=8))
    d = RayDefaultPolicy().decide(make_context(snap, cfg))
    # 8 of 16 CPUs busy (50%): Ray Data asks for 2 × (16 CPUs' worth of throughput) = 32 one-CPU bundles.
    assert d.target_counts == {"cpu4": 8, "gpu1": 0}
    assert d.state["ray_data_request"]["bundles"] == [{"resources": {"CPU": 1.0}, "count": 32}]
    assert any("Ray Data's request needs it" in r for r in d.reasons)
    assert not any(r.startswith("remove") for r in d.reasons)


def test_ray_data_resends_its_last_request_when_utilization_is_low() -> None:
    cfg = config(stages=stage_cfgs())
    nodes = make_nodes(shape="cpu4", count=8)
    first = RayDefaultPolicy().decide(
        make_context(make_snapshot(config=cfg, time=0.0, nodes=nodes, stages=pipeline(busy=32)), cfg)
    )
    low = make_snapshot(config=cfg, time=100.0, nodes=nodes, stages=pipeline(busy=2))
    d = RayDefaultPolicy().decide(make_context(low, cfg, state=first.state))
    assert d.state["ray_data_request"]["bundles"] == first.state["ray_data_request"]["bundles"]
    assert any("re-sending" in r for r in d.reasons)
    # Within 10 s of the last request nothing is recomputed, whatever the load.
    soon = make_snapshot(config=cfg, time=5.0, nodes=nodes, stages=pipeline(busy=32, throughput=1000))
    again = RayDefaultPolicy().decide(make_context(soon, cfg, state=first.state))
    assert again.state == first.state
    # No work anywhere: the dataset is done and the request is cancelled.
    done = make_snapshot(config=cfg, time=200.0, nodes=nodes, stages=pipeline(busy=0, backlog=0))
    assert (
        RayDefaultPolicy()
        .decide(make_context(done, cfg, state=first.state))
        .state["ray_data_request"]["bundles"]
        == []
    )


def test_ray_default_liveness_task_starts_an_empty_cluster() -> None:
    cfg = config(stages=stage_cfgs())
    stages = [make_stage(name="decode", backlog=50), make_stage(name="infer", backlog=50, upstream="decode")]
    assert counts(RayDefaultPolicy(), make_snapshot(config=cfg, stages=stages), cfg) == {"cpu4": 1, "gpu1": 0}


def test_ray_default_state_is_json_and_tolerates_garbage() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(
        config=cfg, time=30.0, nodes=make_nodes(shape="cpu4", count=2), stages=pipeline(busy=8)
    )
    d = RayDefaultPolicy().decide(make_context(snap, cfg))
    restored = json.loads(json.dumps(dict(d.state)))
    later = make_snapshot(
        config=cfg, time=45.0, nodes=make_nodes(shape="cpu4", count=2), stages=pipeline(busy=8)
    )
    a = RayDefaultPolicy().decide(make_context(later, cfg, state=d.state))
    b = RayDefaultPolicy().decide(make_context(later, cfg, state=restored))
    assert a == b
    junk = RayDefaultPolicy().decide(make_context(later, cfg, state={"ray_data_request": {"bundles": 7}}))
    assert junk.target_counts is not None


def test_ray_default_options_are_checked() -> None:
    with pytest.raises(ValueError):
        RayDefaultPolicy(upscaling_speed=0)
    with pytest.raises(ValueError):
        RayDefaultPolicy(idle_timeout_seconds=-1)


# A literal transcription of Ray's get_nodes_for / get_bin_pack_residual / scorer, one bundle at a time, to
# check that the bulk (counted) version in policies.ray_default makes exactly the same choices.


def _ref_fits(node: dict[str, float], b: dict[str, float]) -> bool:
    return all(v <= node.get(k, 0.0) + 1e-9 for k, v in b.items())


def _ref_sub(node: dict[str, float], b: dict[str, float]) -> None:
    for k, v in b.items():
        if v:
            node[k] = node.get(k, 0.0) - v


def _ref_residual(nodes: list[dict[str, float]], demands: list[dict[str, float]]) -> list[dict[str, float]]:
    out = []
    for d in sorted(demands, key=lambda d: (len(d), sum(d.values()), sorted(d.items())), reverse=True):
        for node in nodes:
            if _ref_fits(node, d):
                _ref_sub(node, d)
                break
        else:
            out.append(d)
    return out


def _ref_score(
    node: Mapping[str, float], demands: list[dict[str, float]]
) -> tuple[bool, int, float, float] | None:
    remaining = dict(node)
    fittable = []
    types = {k for d in demands for k, v in d.items() if v > 0}
    for d in demands:
        if _ref_fits(remaining, d):
            fittable.append(d)
            _ref_sub(remaining, d)
    if not fittable:
        return None
    utils = []
    matching = 0
    for k, v in node.items():
        if v < 1:
            continue
        matching += k in types
        utils.append(v * ((v - remaining[k]) / v) ** 3)
    if not utils:
        return None
    gpu_ok = not (node.get("GPU", 0) > 0 and not any("GPU" in d for d in demands))
    return (gpu_ok, matching, min(utils), sum(utils) / len(utils))


def _ref_nodes_for(shapes: list[Any], max_to_add: int, demands: list[dict[str, float]]) -> dict[str, int]:
    to_add: dict[str, int] = {}
    while demands and sum(to_add.values()) < max_to_add:
        scores = []
        for s in shapes:
            if to_add.get(s.name, 0) >= s.max_count:
                continue
            sc = _ref_score(s.resources, demands)
            if sc is not None:
                scores.append((sc, s.name))
        if not scores:
            break
        best = sorted(scores, reverse=True)[0][1]
        to_add[best] = to_add.get(best, 0) + 1
        demands = _ref_residual([dict(next(s for s in shapes if s.name == best).resources)], demands)
    return to_add


BUNDLES = [{"CPU": 1.0}, {"CPU": 3.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0, "memory": 4.0}, {"GPU": 1.0}]
SHAPES = [
    make_shape(name="a", resources={"CPU": 4}, max_count=30),
    make_shape(name="b", resources={"CPU": 16, "memory": 16}, max_count=7),
    make_shape(name="c", resources={"CPU": 8, "GPU": 1}, max_count=30),
    make_shape(name="d", resources={"CPU": 2, "GPU": 4}, max_count=3),
]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.tuples(st.integers(0, len(BUNDLES) - 1), st.integers(1, 40)), max_size=4),
    st.integers(0, 60),
)
def test_ray_default_bulk_node_choice_matches_rays_algorithm(
    picks: list[tuple[int, int]], max_to_add: int
) -> None:
    flat = [dict(BUNDLES[i]) for i, n in picks for _ in range(n)]
    bulk_in = ray_default._demand([(tuple(sorted(BUNDLES[i].items())), n) for i, n in picks])
    expected = _ref_nodes_for(SHAPES, max_to_add, _ref_residual([], flat))
    got, _ = ray_default._nodes_for(SHAPES, {}, max_to_add, bulk_in)
    assert got == expected


# ------------------------------------------------------------------------------------------ throughput


def test_throughput_sizes_the_bottleneck_stage() -> None:
    cfg = config(
        stages=[
            make_stage_config(name="decode", resources={"CPU": 1}, prior_rate={"cpu4": 5.0}),
            make_stage_config(name="infer", resources={"CPU": 4, "GPU": 1}, prior_rate={"gpu1": 50.0}),
        ],
        headroom=0.0,
        drain_seconds=100.0,
    )
    nodes = make_nodes(shape="cpu4", count=1, cpu_utilization=100) + make_nodes(shape="gpu1", count=1)
    stages = [
        # decode: 20/s arriving, a backlog of 2000 to drain in 100 s → 40/s → 8 slots at 5/s → 2 nodes.
        make_stage(
            name="decode",
            backlog=2000,
            throughput=20,
            arrival_rate=20,
            slots_busy=4,
            slots_by_shape={"cpu4": 4},
        ),
        make_stage(
            name="infer",
            backlog=0,
            throughput=20,
            slots_busy=1,
            slots_by_shape={"gpu1": 1},
            upstream="decode",
        ),
    ]
    snap = make_snapshot(config=cfg, nodes=nodes, stages=stages)
    plan = run_policy(ThroughputPolicy(), snap, cfg).plan
    assert plan.target("cpu4") == 2
    want = {d.stage: d.target_rate for d in plan.demands}
    # The chain is sized in one step: infer gets decode's extra output (+20/s) now, not next tick.
    assert want == pytest.approx({"decode": 40.0, "infer": 40.0})
    assert not plan.unmet


def test_throughput_holds_on_unknown_inputs() -> None:
    cfg = config(stages=stage_cfgs())
    snap = make_snapshot(
        config=cfg, nodes=make_nodes(shape="cpu4", count=4), stages=[make_stage(name="decode", backlog=None)]
    )
    plan = run_policy(ThroughputPolicy(), snap, cfg).plan
    assert plan.target("cpu4") == 4
    assert plan.held


# ------------------------------------------------------------------------------------------ loading


def test_installed_policies_lists_the_builtins() -> None:
    found = installed_policies()
    assert found["throughput"] == "policies.throughput:ThroughputPolicy"
    assert found["utilization"] == "policies.utilization:UtilizationPolicy"
    assert found["backlog"] == "policies.backlog:BacklogPolicy"
    assert found["ray-default"] == "policies.ray_default:RayDefaultPolicy"
    assert list(found) == sorted(found)


def test_load_policy_by_name_and_reference_with_options() -> None:
    p = load_policy("utilization", {"target_utilization": 0.5})
    assert isinstance(p, UtilizationPolicy) and p.name == "utilization"
    assert isinstance(load_policy("policies.backlog:BacklogPolicy"), BacklogPolicy)
    assert load_policy("ray-default", {"upscaling_speed": 2}).name == "ray-default"


def test_load_policy_bad_module() -> None:
    with pytest.raises(PolicyLoadError, match="cannot import module 'no_such_raytide_plugin'"):
        load_policy("no_such_raytide_plugin:Policy")


def test_load_policy_bad_attribute() -> None:
    with pytest.raises(PolicyLoadError, match="has no attribute 'NoSuchPolicy'"):
        load_policy("policies.utilization:NoSuchPolicy")


def test_load_policy_bad_options() -> None:
    with pytest.raises(PolicyLoadError, match=r"bad options \['colour'\]"):
        load_policy("backlog", {"colour": "red"})
    with pytest.raises(PolicyLoadError, match="plain YAML/JSON values"):
        load_policy("backlog", {"target_backlog_per_slot": object()})


def test_load_policy_not_a_policy() -> None:
    with pytest.raises(PolicyLoadError, match="resolved to OrderedDict, which has no 'name'"):
        load_policy("collections:OrderedDict")


def test_load_policy_unknown_name_lists_installed() -> None:
    with pytest.raises(PolicyLoadError, match="neither an installed policy") as e:
        load_policy("no-such-policy")
    assert "ray-default" in str(e.value)


def test_recent_throughput_is_exact_with_the_slice_that_left_the_window() -> None:
    from policies.throughput import recent_throughput

    # 100/s until t=0, 200/s for the next 15 s, 300/s for the 15 s after: 60 s windowed rates at 15 and 30.
    before = (45 * 100 + 15 * 200) / 60
    now = (30 * 100 + 15 * 200 + 15 * 300) / 60
    # The slice that just left the window, [-30, -15], ran at 100/s (measured by an earlier decision).
    assert recent_throughput(now, before, 60.0, 15.0, left=100.0) == 300.0
    # Without it the previous window's mean stands in: exact only for a rate steady before the last 15 s.
    assert recent_throughput(now, before, 60.0, 15.0) == 325.0


def test_throughput_state_is_json_and_tolerates_garbage() -> None:
    from types import MappingProxyType

    from autoscaler.core.decide import DecisionState

    cfg = config(stages=stage_cfgs())

    def snap_at(t: float, tp: float) -> Any:
        stage = make_stage(name="decode", backlog=0, throughput=tp, slots_busy=4, slots_by_shape={"cpu4": 4})
        return make_snapshot(time=t, config=cfg, nodes=make_nodes(shape="cpu4", count=4), stages=[stage])

    state = DecisionState()
    for i in range(7):
        state = run_policy(ThroughputPolicy(), snap_at(15.0 * i, 20.0), cfg, state=state).state
    kept = json.loads(json.dumps(dict(state.policy_state)))
    assert kept == dict(state.policy_state)
    assert len(kept["stages"]["decode"]["history"]["end"]) >= 4  # a rate window of per-decision throughputs
    for garbage in (
        {"history": "x", "backlog": 3},
        {"history": {"decode": [[1, "a", 2], None, [1.0]]}},
        {"stages": {"decode": {"time": "x", "backlog": 1.0}, "infer": [1.0, 2.0]}},
        {"stages": {"decode": {"time": 1.0, "backlog": 1.0, "history": [None, {"end": "a"}, [1.0, 2.0]]}}},
        {"stages": {"decode": {"time": 1.0, "backlog": 1.0, "history": {"end": [1.0, "a"], "span": [2.0]}}}},
        {"stages": 3, "pending_since": {"cpu4": "soon"}},
    ):
        bad = DecisionState(policy_state=MappingProxyType(garbage))
        plan = run_policy(ThroughputPolicy(), snap_at(200.0, 20.0), cfg, state=bad).plan
        assert not plan.held


# A state the throughput policy wrote before ThroughputState (positional lists), and what that code decided
# from it at t=90 (see _restart_snapshot): a daemon restarted on newer code must carry on from it.
_OLD_LAYOUT_STATE: dict[str, Any] = {
    "backlog": {"decode": [75.0, 250.0, 30.0], "infer": [75.0, 5.0, 30.0]},
    "pending_since": {"cpu4": 0.0},
    "history": {
        "decode": [
            [15.0, 15.0, 28.0],
            [30.0, 15.0, 30.0],
            [45.0, 15.0, 32.0],
            [60.0, 15.0, 34.0],
            [75.0, 15.0, 36.0],
        ],
        "infer": [
            [15.0, 15.0, 28.0],
            [30.0, 15.0, 30.0],
            [45.0, 15.0, 32.0],
            [60.0, 15.0, 34.0],
            [75.0, 15.0, 36.0],
        ],
    },
}
_OLD_LAYOUT_DECIDED = ({"cpu4": 6, "gpu1": 4}, {"decode": 99.99999999999999, "infer": 106.05})


def _restart_config() -> Config:
    return config(
        stages=[
            make_stage_config(name="decode", resources={"CPU": 1}, prior_rate={"cpu4": 5.0}),
            make_stage_config(name="infer", resources={"CPU": 1, "GPU": 1}, prior_rate={"gpu1": 20.0}),
        ]
    )


def _restart_snapshot(cfg: Config, t: float, tp: float, backlog: float) -> Snapshot:
    return make_snapshot(
        time=t,
        config=cfg,
        nodes=make_nodes(shape="cpu4", count=4) + make_nodes(shape="gpu1", count=1),
        pending_counts={"cpu4": 2},
        stages=[
            make_stage(
                name="decode", backlog=backlog, throughput=tp, slots_busy=4, slots_by_shape={"cpu4": 4}
            ),
            make_stage(
                name="infer",
                backlog=5.0,
                throughput=tp,
                slots_busy=1,
                slots_by_shape={"gpu1": 1},
                upstream="decode",
            ),
        ],
    )


def test_throughput_reads_the_state_its_previous_layout_wrote() -> None:
    from types import MappingProxyType

    from autoscaler.core.decide import DecisionState
    from policies.throughput import RateHistory, ThroughputState

    cfg = _restart_config()
    old = ThroughputState.from_json(_OLD_LAYOUT_STATE)
    assert old.pending_since == {"cpu4": 0.0}
    assert old.stages["decode"].time == 75.0 and old.stages["decode"].backlog == 250.0
    assert old.stages["decode"].throughput == 30.0
    assert old.stages["infer"].history == RateHistory(
        end=(15.0, 30.0, 45.0, 60.0, 75.0), span=(15.0,) * 5, throughput=(28.0, 30.0, 32.0, 34.0, 36.0)
    )
    # The new code, run through the same ticks, remembers exactly what the old code did.
    state = DecisionState()
    for i in range(6):
        state = run_policy(
            ThroughputPolicy(),
            _restart_snapshot(cfg, 15.0 * i, 20.0 + 2 * i, 100.0 + 30 * i),
            cfg,
            state=state,
        ).state
    assert dict(state.policy_state) == old.to_json()
    assert ThroughputState.from_json(json.loads(json.dumps(old.to_json()))) == old
    # Restarted on the old layout, it decides what the old code decided.
    restored = DecisionState(policy_state=MappingProxyType(_OLD_LAYOUT_STATE))
    plan = run_policy(ThroughputPolicy(), _restart_snapshot(cfg, 90.0, 40.0, 400.0), cfg, state=restored).plan
    assert (plan.targets(), {d.stage: d.target_rate for d in plan.demands}) == _OLD_LAYOUT_DECIDED
    # A state from before the throughput was remembered ([time, backlog]) still counts the backlog's growth.
    short = {"backlog": {"decode": [75.0, 250.0]}, "pending_since": {}}
    assert ThroughputState.from_json(short).stages["decode"].throughput is None
    grown = ThroughputPolicy().decide(
        make_context(_restart_snapshot(cfg, 90.0, 40.0, 400.0), cfg, state=short)
    )
    assert grown.demands is not None
    assert {d.stage for d in grown.demands} == {"decode", "infer"}
