"""A selection problem in index form: usable capacities, node bounds, and the (stage, shape) pairs.

Everything the solvers and the repair steps share, worked out once per problem and independent of the solver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.core.selection.problem import SelectionProblem, StageRequirement
from autoscaler.types import NodeShape

# No stage is ever planned more slots than this, whatever its rates say (a sanity bound: a rate of 1e-300
# per slot would otherwise ask for more slots than any cluster has cores).
SLOT_LIMIT = 1_000_000
_MIN_RATE_SHARE = 1e-9
# Tolerances for "met" and for float noise in capacities.
RATE_REL_TOL = 1e-9
FIT_TOL = 1e-9

NeedKey = tuple[tuple[str, float], ...]
"""What one slot needs, as sorted (resource, amount) pairs: a hashable key for a kind of slot."""


@dataclass(slots=True)
class Pair:
    """A stage that can run on a shape: the rate one slot delivers there and how many slots may be planned."""

    stage: int
    shape: int
    rate: float
    per_node: int
    """Slots of this stage that fit on one node of this shape when alone there."""
    xub: int


@dataclass(slots=True)
class Prepared:
    """A problem in index form: stages, shapes and pairs by position (see :func:`prepare`)."""

    problem: SelectionProblem
    shapes: tuple[NodeShape, ...]
    stages: tuple[StageRequirement, ...]
    capacity: list[dict[str, float]]
    """Per shape, what one node offers to stages (resources minus reserved)."""
    needs: list[dict[str, float]]
    """Per stage, the positive slot resources."""
    need_keys: list[NeedKey]
    """Per stage, ``needs`` as a sorted tuple (a hashable key for the structure memo)."""
    lo: list[int]
    hi: list[int]
    hi_label: list[str]
    hi_solve: list[int]
    """``hi`` tightened to what could ever be useful; only for the solver."""
    pairs: list[Pair]
    pairs_of_stage: list[list[int]]
    pairs_of_shape: list[list[int]]
    infeasible_bounds: bool
    notes: list[str]


def fits_one(capacity: Mapping[str, float], need: Mapping[str, float]) -> bool:
    return all(capacity.get(res, 0.0) + FIT_TOL * (1 + amount) >= amount for res, amount in need.items())


def floor_ratio(numerator: float, denominator: float) -> int:
    """floor(numerator / denominator) for positive denominators, clipped to [0, SLOT_LIMIT] so that tiny
    denominators cannot overflow."""
    ratio = numerator / denominator
    return 0 if not ratio > 0 else SLOT_LIMIT if not ratio < SLOT_LIMIT else math.floor(ratio)


def copies_per_node(capacity: Mapping[str, float], need: Mapping[str, float]) -> int | None:
    """Copies of ``need`` that fit on one empty node; None when it needs no resources at all."""
    best: int | None = None
    for res, amount in need.items():
        k = floor_ratio(capacity.get(res, 0.0) * (1 + FIT_TOL) + FIT_TOL, amount)
        best = k if best is None else min(best, k)
    return best


def usable_rate(rate: float, target: float) -> bool:
    """A slot must deliver at least a billionth of the target to count: HiGHS drops matrix entries below
    1e-9 anyway, and a smaller share could not matter within the slot limit."""
    return rate > 0 and rate >= target * _MIN_RATE_SHARE


def slots_needed(target: float, rate: float) -> int:
    ratio = target / rate
    if not ratio < SLOT_LIMIT:
        # Also catches a rate so small that the ratio overflows to inf.
        return SLOT_LIMIT
    return max(0, math.ceil(ratio - RATE_REL_TOL * max(1.0, ratio)))


def prepare(problem: SelectionProblem) -> Prepared:
    """``problem`` in index form: capacities less what is reserved, node bounds (and whether the minimums
    alone break max_nodes or the budget), and every eligible pair with its slot bound tightened to what
    the target needs."""
    shapes = problem.shapes
    stages = problem.stages
    capacity: list[dict[str, float]] = []
    for s in shapes:
        reserved = problem.reserved.get(s.name, {})
        capacity.append({r: max(0.0, float(a) - reserved.get(r, 0.0)) for r, a in s.resources.items()})
    needs = [{r: float(a) for r, a in k.slot_resources.items() if a > 0} for k in stages]

    notes: list[str] = []
    lo: list[int] = []
    hi: list[int] = []
    hi_label: list[str] = []
    for s in shapes:
        hi_s = s.max_count
        label = f"{s.name} max count {s.max_count}"
        if s.name in problem.upper and problem.upper[s.name] < hi_s:
            hi_s = problem.upper[s.name]
            label = f"{s.name} upper bound {hi_s}"
        lo_s = max(s.min_count, problem.lower.get(s.name, 0))
        if lo_s > hi_s:
            notes.append(f"{s.name}: lower bound {lo_s} is above the limit ({label}); using {hi_s}")
            lo_s = hi_s
        lo.append(lo_s)
        hi.append(hi_s)
        hi_label.append(label)

    min_nodes = sum(lo)
    min_cost = sum(s.price_per_hour * n for s, n in zip(shapes, lo, strict=True))
    budget = problem.budget_per_hour
    infeasible = False
    if min_nodes > problem.max_nodes:
        infeasible = True
        notes.append(
            f"the minimum node counts add up to {min_nodes} nodes, over max_nodes {problem.max_nodes}; "
            "keeping the minimums"
        )
    if min_cost > budget * (1 + RATE_REL_TOL) + RATE_REL_TOL:
        infeasible = True
        notes.append(
            f"the minimum node counts cost {min_cost:.2f} $/h, over the budget {budget:.2f} $/h; "
            "keeping the minimums"
        )

    pairs: list[Pair] = []
    pairs_of_stage: list[list[int]] = [[] for _ in stages]
    pairs_of_shape: list[list[int]] = [[] for _ in shapes]
    need_keys = [tuple(sorted(need.items())) for need in needs]
    # Whether a slot fits a shape, and how many fit one node, depend only on the slot's resources: many
    # stages share a few kinds of slot, so each kind is worked out once per shape (-1: does not fit).
    per_node_of: dict[NeedKey, list[int | None]] = {}
    for ki, key in enumerate(need_keys):
        if key not in per_node_of:
            per_node_of[key] = [
                copies_per_node(capacity[si], needs[ki]) if fits_one(capacity[si], needs[ki]) else -1
                for si in range(len(shapes))
            ]
    names = [s.name for s in shapes]
    node_limit = lo if infeasible else hi
    for ki, k in enumerate(stages):
        rates = k.per_slot_rate
        if not rates:
            continue
        fits = per_node_of[need_keys[ki]]
        target = k.target_rate
        # The hot loop of a large problem (stages × shapes): usable_rate and slots_needed, inline.
        least_rate = target * _MIN_RATE_SHARE
        for si, name in enumerate(names):
            rate = rates.get(name, 0.0)
            per_node = fits[si]
            if per_node == -1 or not (rate > 0 and rate >= least_rate):
                continue
            ratio = target / rate
            needed = (
                max(0, math.ceil(ratio - RATE_REL_TOL * max(1.0, ratio)))
                if ratio < SLOT_LIMIT
                else SLOT_LIMIT
            )
            wanted = max(needed, k.min_slots)
            if k.max_slots is not None:
                wanted = min(wanted, k.max_slots)
            if per_node is None:
                # Needs no resources, yet still runs on some node: all of them fit on one.
                per_node = max(1, wanted)
            xub = min(wanted, per_node * node_limit[si])
            if xub <= 0:
                continue
            pairs_of_stage[ki].append(len(pairs))
            pairs_of_shape[si].append(len(pairs))
            pairs.append(Pair(ki, si, rate, per_node, xub))

    hi_solve: list[int] = []
    for si, s in enumerate(shapes):
        if infeasible:
            hi_solve.append(lo[si])
            continue
        useful = sum(math.ceil(pairs[p].xub / pairs[p].per_node) for p in pairs_of_shape[si])
        cap = min(hi[si], useful, problem.max_nodes)
        if s.price_per_hour > 0 and math.isfinite(budget):
            cap = min(cap, floor_ratio(budget * (1 + RATE_REL_TOL) + RATE_REL_TOL, s.price_per_hour))
        hi_solve.append(max(lo[si], cap))

    return Prepared(
        problem=problem,
        shapes=shapes,
        stages=stages,
        capacity=capacity,
        needs=needs,
        need_keys=need_keys,
        lo=lo,
        hi=hi,
        hi_label=hi_label,
        hi_solve=hi_solve,
        pairs=pairs,
        pairs_of_stage=pairs_of_stage,
        pairs_of_shape=pairs_of_shape,
        infeasible_bounds=infeasible,
        notes=notes,
    )


def node_limits(prep: Prepared) -> list[int]:
    """Per shape, the most nodes any plan can have: its bound, max_nodes and what the budget buys."""
    problem = prep.problem
    budget = problem.budget_per_hour
    limits = []
    for si, s in enumerate(prep.shapes):
        most = min(prep.hi[si], problem.max_nodes)
        if s.price_per_hour > 0 and math.isfinite(budget):
            most = min(most, floor_ratio(budget * (1 + RATE_REL_TOL) + RATE_REL_TOL, s.price_per_hour))
        limits.append(max(prep.lo[si], most))
    return limits
