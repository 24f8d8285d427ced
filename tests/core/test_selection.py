from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.packing import first_fit_decreasing
from autoscaler.core.selection import (
    Planner,
    Selection,
    SelectionProblem,
    StageRequirement,
    covers,
    select_covering,
    select_shapes,
)
from autoscaler.core.selection import choose as choose_module
from autoscaler.core.selection import covering as covering_module
from autoscaler.core.selection import highs as highs_module
from autoscaler.core.selection.prepared import prepare
from autoscaler.core.selection.program import Program
from autoscaler.core.selection.structure import StructureMemo, compute_structure
from autoscaler.types import NodeShape

INF = math.inf


def problem(
    shapes: list[NodeShape],
    stages: list[StageRequirement],
    *,
    max_nodes: int = 100,
    budget: float = INF,
    lower: Mapping[str, int] | None = None,
    upper: Mapping[str, int] | None = None,
    reserved: Mapping[str, Mapping[str, float]] | None = None,
) -> SelectionProblem:
    return SelectionProblem(
        shapes=tuple(shapes),
        stages=tuple(stages),
        max_nodes=max_nodes,
        budget_per_hour=budget,
        lower=lower or {},
        upper=upper or {},
        reserved=reserved or {},
    )


def unmet_fraction(sel: Selection) -> float:
    return sum(max(0.0, 1.0 - u.planned_rate / u.target_rate) for u in sel.unmet if u.target_rate > 0)


def placed(sel: Selection, stage: str) -> dict[str, int]:
    return {p.shape: p.slots for p in sel.placements if p.stage == stage}


def reason(sel: Selection, stage: str) -> str:
    (u,) = [u for u in sel.unmet if u.stage == stage]
    return u.reason


# --------------------------------------------------------------------------------------------------
# Brute force: every node-count vector, every way of filling every node, for tiny instances.


def _fits(capacity: Mapping[str, float], need: Mapping[str, float]) -> bool:
    return all(capacity.get(r, 0.0) + 1e-9 >= a for r, a in need.items() if a > 0)


def brute_force(p: SelectionProblem) -> tuple[float, float]:
    """(least summed unmet fraction, least cost at that unmet) with slots packed onto whole nodes.

    Per shape, the "patterns" are all slot mixes that fit on one node; n nodes reach every sum of n
    patterns (clipped at what each stage can use). Every count vector within the limits is tried with
    every combination of reachable per-shape totals.
    """
    shapes, stages = p.shapes, p.stages
    useful: list[list[tuple[int, float, int]]] = []  # per shape: (stage, rate, most slots worth having)
    for s in shapes:
        row = []
        for ki, k in enumerate(stages):
            rate = k.per_slot_rate.get(s.name, 0.0)
            if rate > 0 and k.target_rate > 0 and _fits(s.resources, k.slot_resources):
                most = math.ceil(k.target_rate / rate - 1e-9)
                row.append((ki, rate, most if k.max_slots is None else min(most, k.max_slots)))
        useful.append(row)
    reach: list[list[set[tuple[int, ...]]]] = []
    for si, s in enumerate(shapes):
        patterns = []
        for ys in itertools.product(*[range(most + 1) for _, _, most in useful[si]]):
            use: dict[str, float] = {}
            for (ki, _, _), y in zip(useful[si], ys, strict=True):
                for r, a in stages[ki].slot_resources.items():
                    use[r] = use.get(r, 0.0) + y * a
            if _fits(s.resources, use):
                patterns.append(ys)
        caps = [most for _, _, most in useful[si]]
        levels = [{tuple(0 for _ in caps)}]
        for _ in range(s.max_count):
            levels.append(
                {
                    tuple(min(c, a + b) for a, b, c in zip(t, y, caps, strict=True))
                    for t in levels[-1]
                    for y in patterns
                }
            )
        reach.append(levels)
    best = (INF, INF)
    for counts in itertools.product(*[range(s.min_count, s.max_count + 1) for s in shapes]):
        cost = sum(s.price_per_hour * n for s, n in zip(shapes, counts, strict=True))
        if sum(counts) > p.max_nodes or cost > p.budget_per_hour + 1e-9:
            continue
        least = INF
        for combo in itertools.product(*[reach[si][n] for si, n in enumerate(counts)]):
            rates: list[list[float]] = [[] for _ in stages]
            for si, totals in enumerate(combo):
                for (ki, rate, _), x in zip(useful[si], totals, strict=True):
                    rates[ki].extend([rate] * x)
            unmet = 0.0
            for ki, k in enumerate(stages):
                if k.target_rate > 0:
                    best_slots = sorted(rates[ki], reverse=True)[: k.max_slots]
                    unmet += max(0.0, 1.0 - sum(best_slots) / k.target_rate)
            least = min(least, unmet)
        if (round(least, 9), cost) < (round(best[0], 9), best[1]):
            best = (least, cost)
    return best


def random_small_problem(rng: np.random.Generator) -> SelectionProblem:
    shapes = []
    for i in range(int(rng.integers(2, 4))):
        resources = {"CPU": float(rng.choice([2, 4, 8]))}
        if rng.random() < 0.4:
            resources["GPU"] = float(rng.choice([1, 2]))
        price = float(rng.choice([0.5, 1.0, 1.5, 2.0, 3.0, 4.5]))
        shapes.append(NodeShape(f"s{i}", resources, price, min_count=0, max_count=int(rng.integers(0, 4))))
    stages = []
    for k in range(int(rng.integers(1, 4))):
        need = {"CPU": float(rng.choice([0.5, 1, 2, 3]))}
        if rng.random() < 0.3:
            need["GPU"] = 1.0
        rates = {s.name: float(rng.choice([1.0, 2.0, 3.0, 5.0])) for s in shapes if rng.random() < 0.7}
        target = float(rng.choice([0, 1, 2, 4, 5, 7, 9, 12]))
        max_slots = None if rng.random() < 0.7 else int(rng.integers(1, 5))
        stages.append(StageRequirement(f"k{k}", target, need, rates, max_slots=max_slots))
    budget = INF if rng.random() < 0.6 else float(rng.choice([2, 3, 5, 8]))
    return problem(shapes, stages, max_nodes=int(rng.integers(1, 7)), budget=budget)


@pytest.mark.parametrize("seed", range(200))
def test_matches_brute_force_on_small_instances(seed: int) -> None:
    p = random_small_problem(np.random.default_rng(seed))
    want_unmet, want_cost = brute_force(p)
    sel = select_shapes(p)
    assert unmet_fraction(sel) == pytest.approx(want_unmet, abs=1e-6)
    assert sel.cost_per_hour == pytest.approx(want_cost, abs=1e-6)
    assert (sel.status == "optimal") == (want_unmet < 1e-9)


# --------------------------------------------------------------------------------------------------
# Properties over arbitrary valid problems.


@st.composite
def selection_problems(draw: st.DrawFn) -> SelectionProblem:
    n_shapes = draw(st.integers(1, 4))
    shapes = []
    for i in range(n_shapes):
        resources = {"CPU": draw(st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0]))}
        if draw(st.booleans()):
            resources["GPU"] = draw(st.sampled_from([1.0, 2.0, 4.0]))
        lo = draw(st.integers(0, 2))
        shapes.append(
            NodeShape(
                f"shape{i}",
                resources,
                draw(st.sampled_from([0.0, 0.25, 1.0, 2.5, 4.0, 10.0])),
                min_count=lo,
                max_count=draw(st.integers(lo, 6)),
            )
        )
    names = [s.name for s in shapes]
    stages = []
    for k in range(draw(st.integers(0, 4))):
        need = {"CPU": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0]))}
        if draw(st.booleans()):
            need["GPU"] = draw(st.sampled_from([0.0, 1.0, 2.0]))
        rated = draw(st.lists(st.sampled_from(names), unique=True, max_size=n_shapes))
        rates = {n: draw(st.floats(0.0, 20.0, allow_nan=False)) for n in rated}
        min_slots = draw(st.integers(0, 2))
        max_slots = draw(st.none() | st.integers(min_slots, 12))
        target = draw(st.sampled_from([0.0, 0.5, 3.0, 10.0, 40.0]) | st.floats(0.0, 100.0, allow_nan=False))
        stages.append(
            StageRequirement(f"stage{k}", target, need, rates, max_slots=max_slots, min_slots=min_slots)
        )
    lower = draw(st.dictionaries(st.sampled_from(names), st.integers(0, 4), max_size=n_shapes))
    upper = draw(st.dictionaries(st.sampled_from(names), st.integers(0, 6), max_size=n_shapes))
    return problem(
        shapes,
        stages,
        max_nodes=draw(st.integers(0, 15)),
        budget=draw(st.just(INF) | st.floats(0.0, 60.0, allow_nan=False)),
        lower=lower,
        upper=upper,
    )


def bounds(p: SelectionProblem, shape: NodeShape) -> tuple[int, int]:
    hi = min(shape.max_count, p.upper.get(shape.name, shape.max_count))
    lo = min(max(shape.min_count, p.lower.get(shape.name, 0)), hi)
    return lo, hi


@settings(max_examples=120, deadline=None)
@given(selection_problems())
def test_any_valid_problem_gets_a_sound_plan(p: SelectionProblem) -> None:
    sel = select_shapes(p)
    assert select_shapes(p) == sel, "same input, same output"

    shapes = {s.name: s for s in p.shapes}
    stages = {k.name: k for k in p.stages}
    assert set(sel.counts) == set(shapes)
    for name, count in sel.counts.items():
        lo, hi = bounds(p, shapes[name])
        assert isinstance(count, int)
        assert 0 <= lo <= count <= hi
        if sel.status == "infeasible_bounds":
            assert count == lo
    assert sel.cost_per_hour == pytest.approx(
        sum(shapes[n].price_per_hour * c for n, c in sel.counts.items())
    )
    if sel.status != "infeasible_bounds":
        assert sum(sel.counts.values()) <= p.max_nodes
        assert sel.cost_per_hour <= p.budget_per_hour + 1e-9

    assert list(sel.placements) == sorted(sel.placements, key=lambda pl: (pl.stage, pl.shape))
    for pl in sel.placements:
        k, s = stages[pl.stage], shapes[pl.shape]
        assert pl.slots > 0
        assert k.per_slot_rate.get(s.name, 0.0) > 0
        assert _fits(s.resources, k.slot_resources)
        assert pl.rate == pytest.approx(pl.slots * k.per_slot_rate[s.name])
    for name, s in shapes.items():
        items = [
            (pl.stage, stages[pl.stage].slot_resources, pl.slots) for pl in sel.placements if pl.shape == name
        ]
        assert first_fit_decreasing(s.resources, sel.counts[name], items).ok, f"{name} does not pack"

    unmet = {u.stage: u for u in sel.unmet}
    assert len(unmet) == len(sel.unmet)
    for name, k in stages.items():
        slots = sum(pl.slots for pl in sel.placements if pl.stage == name)
        rate = sum(pl.rate for pl in sel.placements if pl.stage == name)
        if k.max_slots is not None:
            assert slots <= k.max_slots
        if k.target_rate <= 0 and k.min_slots == 0:
            assert slots == 0
        if rate >= k.target_rate * (1 - 1e-9) - 1e-9:
            assert name not in unmet
        else:
            assert unmet[name].planned_rate == pytest.approx(rate)
            assert unmet[name].target_rate == k.target_rate
            assert unmet[name].reason
    if sel.status == "optimal":
        assert not sel.unmet
    if sel.status == "partial":
        assert sel.unmet


# --------------------------------------------------------------------------------------------------
# Specific situations.

CPU8 = NodeShape("cpu8", {"CPU": 8}, price_per_hour=0.4, max_count=50)
GPU1 = NodeShape("gpu1", {"CPU": 8, "GPU": 1}, price_per_hour=3.0, max_count=10)


def test_gpu_stage_on_gpu_shape_and_cpu_stage_on_cheap_cpu_shape() -> None:
    sel = select_shapes(
        problem(
            [CPU8, GPU1],
            [
                # Decode runs as fast on the GPU node, but that node's CPUs cost 7.5× as much.
                StageRequirement("decode", 100.0, {"CPU": 4}, {"cpu8": 10.0, "gpu1": 10.0}),
                StageRequirement("infer", 40.0, {"CPU": 4, "GPU": 1}, {"gpu1": 20.0}),
            ],
        )
    )
    assert sel.status == "optimal"
    assert placed(sel, "infer") == {"gpu1": 2}
    assert placed(sel, "decode") == {"cpu8": 8, "gpu1": 2}  # the spare 4 CPUs of each GPU node are free
    assert dict(sel.counts) == {"cpu8": 4, "gpu1": 2}
    assert sel.cost_per_hour == pytest.approx(4 * 0.4 + 2 * 3.0)


def test_cpu_only_work_never_buys_gpu_nodes() -> None:
    sel = select_shapes(
        problem([CPU8, GPU1], [StageRequirement("decode", 95.0, {"CPU": 1}, {"cpu8": 1.0, "gpu1": 1.5})])
    )
    assert dict(sel.counts) == {"cpu8": 12, "gpu1": 0}
    assert placed(sel, "decode") == {"cpu8": 95}


def test_cpu_stage_fills_leftover_cpu_on_gpu_nodes() -> None:
    gpu = NodeShape("gpu", {"CPU": 16, "GPU": 1}, price_per_hour=2.0, max_count=10)
    cpu = NodeShape("cpu", {"CPU": 4}, price_per_hour=1.0, max_count=10)
    sel = select_shapes(
        problem(
            [cpu, gpu],
            [
                StageRequirement("infer", 30.0, {"CPU": 2, "GPU": 1}, {"gpu": 10.0}),
                StageRequirement("decode", 40.0, {"CPU": 1}, {"cpu": 1.0, "gpu": 1.0}),
            ],
        )
    )
    # 3 GPU nodes for infer leave 3 × 14 CPUs: decode needs 40 of them and no CPU node at all.
    assert dict(sel.counts) == {"cpu": 0, "gpu": 3}
    assert placed(sel, "decode") == {"gpu": 40}
    assert sel.status == "optimal"


def test_budget_cap_reports_unmet_and_still_plans_the_rest() -> None:
    sel = select_shapes(
        problem(
            [CPU8, GPU1],
            [
                StageRequirement("decode", 40.0, {"CPU": 1}, {"cpu8": 5.0}),
                StageRequirement("infer", 100.0, {"CPU": 1, "GPU": 1}, {"gpu1": 20.0}),
            ],
            budget=10.0,
        )
    )
    assert sel.status == "partial"
    assert sel.cost_per_hour <= 10.0
    assert placed(sel, "decode") == {"cpu8": 8}
    assert placed(sel, "infer") == {"gpu1": 3}
    assert "capped by budget 10.00 $/h" in reason(sel, "infer")
    assert [u.stage for u in sel.unmet] == ["infer"]
    assert sel.unmet[0].planned_rate == pytest.approx(60.0)


def test_max_count_and_max_nodes_caps_are_named() -> None:
    stages = [StageRequirement("infer", 300.0, {"GPU": 1}, {"gpu1": 20.0})]
    by_count = select_shapes(problem([CPU8, GPU1], stages))
    assert by_count.counts["gpu1"] == 10
    assert reason(by_count, "infer") == "capped by gpu1 max count 10"
    by_nodes = select_shapes(problem([CPU8, GPU1], stages, max_nodes=4))
    assert by_nodes.counts["gpu1"] == 4
    assert reason(by_nodes, "infer") == "capped by max_nodes 4"
    by_upper = select_shapes(problem([CPU8, GPU1], stages, upper={"gpu1": 2}))
    assert by_upper.counts["gpu1"] == 2
    assert reason(by_upper, "infer") == "capped by gpu1 upper bound 2"


def test_max_slots_cap_is_named() -> None:
    sel = select_shapes(
        problem([CPU8], [StageRequirement("decode", 100.0, {"CPU": 1}, {"cpu8": 5.0}, max_slots=4)])
    )
    assert placed(sel, "decode") == {"cpu8": 4}
    assert sel.counts["cpu8"] == 1
    assert reason(sel, "decode") == "capped by max_slots 4"


def test_stage_no_shape_can_run_is_reported_and_others_still_planned() -> None:
    sel = select_shapes(
        problem(
            [CPU8, GPU1],
            [
                StageRequirement("tpu", 10.0, {"TPU": 1}, {"cpu8": 5.0, "gpu1": 5.0}),
                StageRequirement("decode", 10.0, {"CPU": 1}, {"cpu8": 5.0}),
                StageRequirement("unknown", 10.0, {"CPU": 1}, {}),
                StageRequirement("too_big", 10.0, {"CPU": 4, "GPU": 2}, {"gpu1": 5.0}),
                StageRequirement("wrong_shape", 10.0, {"GPU": 1}, {"cpu8": 5.0}),
            ],
        )
    )
    assert sel.status == "partial"
    assert reason(sel, "tpu") == "no node shape can run it (needs TPU: 1)"
    assert reason(sel, "unknown") == "no throughput estimate on any shape"
    assert reason(sel, "too_big") == "no node shape can run it (needs CPU: 4, GPU: 2)"
    assert reason(sel, "wrong_shape") == "no throughput estimate on any shape that can run it (gpu1)"
    assert placed(sel, "decode") == {"cpu8": 2}
    assert dict(sel.counts) == {"cpu8": 1, "gpu1": 0}
    assert all(u.planned_rate == 0 for u in sel.unmet)


def test_fragmentation_is_repaired_with_another_node() -> None:
    # 2×6 + 2×3 + 1×2 CPUs = 20 CPUs: two 10-CPU nodes by the sum, but whole nodes need three
    # (6+3, 6+3, then the 2 has nowhere to go).
    shape = NodeShape("n10", {"CPU": 10}, price_per_hour=1.0, max_count=10)
    stages = [
        StageRequirement("a", 2.0, {"CPU": 6}, {"n10": 1.0}),
        StageRequirement("b", 2.0, {"CPU": 3}, {"n10": 1.0}),
        StageRequirement("c", 1.0, {"CPU": 2}, {"n10": 1.0}),
    ]
    sel = select_shapes(problem([shape], stages))
    assert sel.status == "optimal"
    assert sel.counts["n10"] == 3


def test_fragmentation_that_cannot_be_repaired_becomes_unmet() -> None:
    shape = NodeShape("n10", {"CPU": 10}, price_per_hour=1.0, max_count=2)
    stages = [
        StageRequirement("a", 2.0, {"CPU": 6}, {"n10": 1.0}),
        StageRequirement("b", 2.0, {"CPU": 3}, {"n10": 1.0}),
        StageRequirement("c", 1.0, {"CPU": 2}, {"n10": 1.0}),
    ]
    sel = select_shapes(problem([shape], stages))
    assert sel.status == "partial"
    assert sel.counts["n10"] == 2
    # Giving up one 6-CPU (or 3-CPU) slot costs half a stage; giving up the 2-CPU one would cost all of c.
    assert unmet_fraction(sel) == pytest.approx(0.5)
    (u,) = sel.unmet
    assert "do not pack onto whole n10 nodes" in u.reason
    assert "capped by n10 max count 2" in u.reason


def test_stages_that_cannot_share_a_node_are_counted_before_packing() -> None:
    # 3-CPU and 2-CPU slots never share a 4-CPU node: 2 + 1 slots need 3 nodes, although 8 CPUs "fit" 2.
    shape = NodeShape("n4", {"CPU": 4}, price_per_hour=1.0, max_count=10)
    stages = [
        StageRequirement("a", 2.0, {"CPU": 3}, {"n4": 1.0}),
        StageRequirement("c", 1.0, {"CPU": 2}, {"n4": 1.0}),
    ]
    assert select_shapes(problem([shape], stages)).counts["n4"] == 3


def test_no_stages_gives_the_minimum_counts() -> None:
    shapes = [NodeShape("a", {"CPU": 4}, 1.0, min_count=1, max_count=5), NodeShape("b", {"CPU": 4}, 1.0)]
    sel = select_shapes(problem(shapes, [], lower={"b": 2}))
    assert dict(sel.counts) == {"a": 1, "b": 2}
    assert sel.status == "optimal"
    assert sel.placements == () and sel.unmet == ()


def test_zero_target_plans_no_slots_unless_min_slots() -> None:
    sel = select_shapes(
        problem(
            [CPU8],
            [
                StageRequirement("idle", 0.0, {"CPU": 1}, {"cpu8": 5.0}),
                StageRequirement("kept", 0.0, {"CPU": 2}, {"cpu8": 5.0}, min_slots=3),
            ],
        )
    )
    assert placed(sel, "idle") == {}
    assert placed(sel, "kept") == {"cpu8": 3}
    assert sel.counts["cpu8"] == 1
    assert sel.status == "optimal"


def test_min_slots_that_cannot_fit_are_noted_not_raised() -> None:
    sel = select_shapes(
        problem([CPU8], [StageRequirement("kept", 0.0, {"CPU": 8}, {"cpu8": 5.0}, min_slots=3)], max_nodes=2)
    )
    assert placed(sel, "kept") == {"cpu8": 2}
    assert sel.reasons == ("kept: only 2 of min_slots 3 slot(s) fit",)


def test_lower_bounds_hold_current_nodes_and_the_work_uses_them() -> None:
    sel = select_shapes(
        problem(
            [CPU8, GPU1],
            [StageRequirement("decode", 10.0, {"CPU": 1}, {"cpu8": 1.0, "gpu1": 1.0})],
            lower={"gpu1": 1},
        )
    )
    # The GPU node is kept anyway, so its 8 CPUs are free capacity: only 2 slots need a CPU node.
    assert dict(sel.counts) == {"cpu8": 1, "gpu1": 1}
    assert placed(sel, "decode") == {"cpu8": 2, "gpu1": 8}


def test_minimum_counts_over_max_nodes_are_kept_and_said() -> None:
    shapes = [
        NodeShape("a", {"CPU": 4}, 1.0, min_count=3, max_count=5),
        NodeShape("b", {"CPU": 4}, 1.0, min_count=2),
    ]
    sel = select_shapes(problem(shapes, [StageRequirement("s", 100.0, {"CPU": 1}, {"a": 1.0})], max_nodes=4))
    assert sel.status == "infeasible_bounds"
    assert dict(sel.counts) == {"a": 3, "b": 2}
    assert placed(sel, "s") == {"a": 12}
    assert any("over max_nodes 4" in r for r in sel.reasons)
    assert "exceed max_nodes or the budget" in reason(sel, "s")


def test_minimum_counts_over_budget_are_kept_and_said() -> None:
    shapes = [NodeShape("a", {"CPU": 4}, 5.0, min_count=2)]
    sel = select_shapes(problem(shapes, [], budget=6.0))
    assert sel.status == "infeasible_bounds"
    assert dict(sel.counts) == {"a": 2}
    assert sel.cost_per_hour == 10.0
    assert any("over the budget 6.00 $/h" in r for r in sel.reasons)


def test_lower_above_upper_is_clipped_and_noted() -> None:
    sel = select_shapes(problem([CPU8], [], lower={"cpu8": 7}, upper={"cpu8": 3}))
    assert sel.counts["cpu8"] == 3
    assert sel.reasons == ("cpu8: lower bound 7 is above the limit (cpu8 upper bound 3); using 3",)


def test_reserved_resources_are_not_given_to_stages() -> None:
    stages = [StageRequirement("decode", 16.0, {"CPU": 1}, {"cpu8": 1.0})]
    assert select_shapes(problem([CPU8], stages)).counts["cpu8"] == 2
    assert select_shapes(problem([CPU8], stages, reserved={"cpu8": {"CPU": 2}})).counts["cpu8"] == 3


def test_slots_needing_no_resources_still_need_a_node() -> None:
    sel = select_shapes(problem([CPU8], [StageRequirement("free", 10.0, {}, {"cpu8": 1.0})]))
    assert sel.counts["cpu8"] == 1
    assert placed(sel, "free") == {"cpu8": 10}


def test_free_shapes_are_not_bought_for_nothing() -> None:
    free = NodeShape("free", {"CPU": 1}, price_per_hour=0.0, max_count=10)
    sel = select_shapes(
        problem([free, CPU8], [StageRequirement("s", 3.0, {"CPU": 1}, {"free": 1.0, "cpu8": 1.0})])
    )
    assert dict(sel.counts) == {"free": 3, "cpu8": 0}


def test_plain_dict_inputs_are_frozen() -> None:
    rates = {"cpu8": 1.0}
    req = StageRequirement("s", 1.0, {"CPU": 1}, rates)
    rates["cpu8"] = 100.0
    assert req.per_slot_rate["cpu8"] == 1.0
    assert req.target_rate == 1.0 and isinstance(req.target_rate, float)


@pytest.mark.parametrize(
    "make",
    [
        lambda: StageRequirement("s", math.nan, {"CPU": 1}, {"cpu8": 1.0}),
        lambda: StageRequirement("s", math.inf, {"CPU": 1}, {"cpu8": 1.0}),
        lambda: StageRequirement("s", -1.0, {"CPU": 1}, {"cpu8": 1.0}),
        lambda: StageRequirement("s", 1.0, {"CPU": 1}, {"cpu8": math.nan}),
        lambda: StageRequirement("s", 1.0, {"CPU": 1}, {"cpu8": -2.0}),
        lambda: StageRequirement("s", 1.0, {"CPU": 1}, {"cpu8": math.inf}),
        lambda: StageRequirement("s", 1.0, {"CPU": -1}, {"cpu8": 1.0}),
        lambda: StageRequirement("s", 1.0, {"CPU": 1}, {"cpu8": 1.0}, max_slots=1, min_slots=2),
        lambda: problem([CPU8], [], budget=math.nan),
        lambda: problem([CPU8], [], budget=-1.0),
        lambda: problem([CPU8], [], max_nodes=-1),
        lambda: problem([CPU8, CPU8], []),
        lambda: problem([NodeShape("x", {"CPU": 1}, math.nan)], []),
        lambda: problem([NodeShape("x", {"CPU": math.inf}, 1.0)], []),
        lambda: problem([CPU8], [], lower={"nope": 1}),
        lambda: problem([CPU8], [], upper={"cpu8": -1}),
    ],
)
def test_invalid_numbers_are_refused(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError):
        make()


def benchmark_sized_problem() -> SelectionProblem:
    rng = np.random.default_rng(7)
    shapes = [
        NodeShape(f"cpu{i}", {"CPU": c}, round(c * 0.045, 3), max_count=100)
        for i, c in enumerate([4, 8, 16, 32, 48, 64, 96, 8])
    ]
    shapes += [
        NodeShape(f"gpu{i}", {"CPU": 8 * g, "GPU": g}, 2.0 * g, max_count=60)
        for i, g in enumerate([1, 2, 4, 8])
    ]
    names = [s.name for s in shapes]
    stages = []
    for k in range(50):
        gpu = k % 3 == 0
        need = {"CPU": float(rng.choice([0.5, 1, 2, 4]))} | ({"GPU": 1.0} if gpu else {})
        pool = names[8:] if gpu else names
        eligible = rng.choice(pool, size=int(rng.integers(2, 5)), replace=False)
        base = float(rng.uniform(1, 20))
        stages.append(
            StageRequirement(
                f"s{k:02}",
                base * float(rng.uniform(1, 20)),
                need,
                {str(n): base * float(rng.uniform(0.7, 1.3)) for n in eligible},
            )
        )
    return problem(shapes, stages, max_nodes=1000)


def test_benchmark_sized_problem_is_sound_and_deterministic() -> None:
    p = benchmark_sized_problem()
    shapes, stages = list(p.shapes), list(p.stages)
    sel = select_shapes(p)
    assert sel == select_shapes(p)
    assert sel.status == "optimal"
    by_name = {s.name: s for s in shapes}
    stage_by_name = {k.name: k for k in stages}
    for name, count in sel.counts.items():
        items = [
            (pl.stage, stage_by_name[pl.stage].slot_resources, pl.slots)
            for pl in sel.placements
            if pl.shape == name
        ]
        assert first_fit_decreasing(by_name[name].resources, count, items).ok


# --------------------------------------------------------------------------------------------------
# select_covering / covers: the same answer as select_shapes's status, proved early when it is no.


def covering_agrees(p: SelectionProblem) -> None:
    sel = select_shapes(p)
    want = sel if sel.status == "optimal" else None
    assert select_covering(p) == want
    assert covers(p) == (want is not None)


@settings(max_examples=150, deadline=None)
@given(selection_problems())
def test_select_covering_is_select_shapes_when_everything_is_met(p: SelectionProblem) -> None:
    covering_agrees(p)


@pytest.mark.parametrize("seed", range(60))
def test_select_covering_agrees_near_the_capacity_edge(seed: int) -> None:
    # Demand scaled to about what the nodes can hold, so that both answers occur and the proofs are tried
    # where they are hardest.
    rng = np.random.default_rng(1000 + seed)
    p = random_small_problem(rng)
    for factor in (0.5, 0.9, 1.0, 1.1, 2.0):
        covering_agrees(
            dataclasses.replace(
                p, stages=tuple(dataclasses.replace(k, target_rate=k.target_rate * factor) for k in p.stages)
            )
        )


def forbid_selecting(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> Selection:
        raise AssertionError("the proof should have answered without selecting")

    monkeypatch.setattr(covering_module, "choose", fail)


def test_covering_proved_short_by_resources_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 GPU slots wanted, 4 GPUs in all the nodes the bounds allow.
    p = problem(
        [NodeShape("g2", {"CPU": 8, "GPU": 2}, 2.0, max_count=2)],
        [StageRequirement("infer", 10.0, {"CPU": 1, "GPU": 1}, {"g2": 1.0})],
    )
    forbid_selecting(monkeypatch)
    monkeypatch.setattr(covering_module, "Program", None)  # not even the program is built
    assert select_covering(p) is None


def test_covering_proved_short_by_the_relaxation(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3-CPU and 2-CPU slots never share a 4-CPU node: 3 + 3 slots need 6 nodes although 15 CPUs "fit" 4.
    p = problem(
        [NodeShape("n4", {"CPU": 4}, 1.0, max_count=4)],
        [
            StageRequirement("a", 3.0, {"CPU": 3}, {"n4": 1.0}),
            StageRequirement("b", 3.0, {"CPU": 2}, {"n4": 1.0}),
        ],
    )
    assert select_shapes(p).status == "partial"
    forbid_selecting(monkeypatch)
    assert select_covering(p) is None


def test_covering_plan_is_the_selection() -> None:
    p = problem(
        [NodeShape("n4", {"CPU": 4}, 1.0, max_count=6)],
        [
            StageRequirement("a", 3.0, {"CPU": 3}, {"n4": 1.0}),
            StageRequirement("b", 3.0, {"CPU": 2}, {"n4": 1.0}),
        ],
    )
    sel = select_covering(p)
    assert sel is not None and sel == select_shapes(p) and sel.status == "optimal"


def test_covers_says_yes_without_the_integer_program(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plenty of nodes: the rounded relaxation already meets every target, so the answer needs no exact plan.
    p = problem(
        [
            NodeShape("c16", {"CPU": 16}, 0.7, max_count=40),
            NodeShape("g1", {"CPU": 8, "GPU": 1}, 1.2, max_count=20),
        ],
        [
            StageRequirement("decode", 100.0, {"CPU": 1}, {"c16": 2.0, "g1": 1.8}),
            StageRequirement("infer", 100.0, {"CPU": 1, "GPU": 1}, {"g1": 25.0}),
        ],
        upper={"c16": 30, "g1": 10},
    )
    assert select_shapes(p).status == "optimal"

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("covers() should not solve the integer program for a yes")

    monkeypatch.setattr(choose_module, "solve_exact", fail)
    assert covers(p)


def test_infeasible_bounds_never_cover() -> None:
    p = problem([NodeShape("a", {"CPU": 4}, 1.0, min_count=3, max_count=5)], [], max_nodes=2)
    assert select_shapes(p).status == "infeasible_bounds"
    assert select_covering(p) is None


# --------------------------------------------------------------------------------------------------
# Without SciPy's HiGHS binding (older or changed SciPy), the public milp path gives the same answers.


@pytest.mark.parametrize("seed", range(0, 200, 10))
def test_milp_fallback_matches_brute_force(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(highs_module, "_HIGHS", None)
    p = random_small_problem(np.random.default_rng(seed))
    want_unmet, want_cost = brute_force(p)
    sel = select_shapes(p)
    assert unmet_fraction(sel) == pytest.approx(want_unmet, abs=1e-6)
    assert sel.cost_per_hour == pytest.approx(want_cost, abs=1e-6)
    covering_agrees(p)


def test_milp_fallback_and_highs_binding_agree_on_a_large_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    p = benchmark_sized_problem()
    direct = select_shapes(p)
    monkeypatch.setattr(highs_module, "_HIGHS", None)
    assert select_shapes(p) == direct


# --------------------------------------------------------------------------------------------------
# The program: slot-per-node rows that a summed row implies are left out, and the cached structure.


def test_implied_rows_are_left_out_but_bind_through_the_summed_rows() -> None:
    # 1-CPU and 2-CPU slots on 8-CPU nodes: the CPU row (x1/8 + x2/4 <= n) implies x1 <= 8n and x2 <= 4n.
    shape = NodeShape("n8", {"CPU": 8}, 1.0, max_count=20)
    stages = [
        StageRequirement("one", 20.0, {"CPU": 1}, {"n8": 1.0}),
        StageRequirement("two", 10.0, {"CPU": 2}, {"n8": 1.0}),
    ]
    program = Program(prepare(problem([shape], stages)), compute_structure)
    per_node_rows = [
        r
        for r in range(program.rows.lower.size)
        if program.rows.start[r + 1] - program.rows.start[r] == 2 and program.rows.upper[r] == 0.0
    ]
    assert per_node_rows == []
    sel = select_shapes(problem([shape], stages))
    assert sel.status == "optimal" and sel.counts["n8"] == 5  # 20 + 2·10 = 40 CPUs


def test_shape_structure_matches_pairwise_conflicts() -> None:
    # On 4 CPUs a 3-CPU slot shares a node with nothing here; 2- and 1.5-CPU slots share with each other.
    kinds = ((("CPU", 3.0),), (("CPU", 2.0),), (("CPU", 1.5),), (("CPU", 3.0),))
    found = compute_structure({"CPU": 4.0}, kinds)
    assert found.exclusive == (True, False, False, True)
    assert set(found.cliques) == {(0, 1, 3), (0, 2, 3)}
    memo = StructureMemo()
    assert memo({"CPU": 4.0}, kinds) == found
    assert memo({"CPU": 4.0}, kinds) is memo({"CPU": 4.0}, kinds)


def test_a_planner_kept_across_problems_answers_as_a_fresh_one() -> None:
    # What a planner keeps between calls (the structure memo) makes no answer depend on the calls before.
    kept = Planner()
    for seed in range(12):
        p = random_small_problem(np.random.default_rng(500 + seed))
        assert kept.select_shapes(p) == Planner().select_shapes(p) == select_shapes(p)
        assert kept.select_covering(p) == Planner().select_covering(p)
        assert kept.covers(p) == Planner().covers(p) == covers(p)
