"""Cheapest node-shape mix for a set of stage rates: an integer program, HiGHS, and a packing check.

Given per-stage target rates and, per stage, the rate one slot delivers on each node shape, choose how
many nodes of each shape to run and how many slots of each stage to put on each shape so that, in order
of priority:

1. as much of every stage's target as possible is met (the summed unmet *fraction* is minimal),
2. the cluster costs as little per hour as possible,
3. no slot is planned that the targets do not need.

Formulation (``s`` a shape, ``k`` a stage, ``j`` a resource)::

    n_s     integer in [lo_s, hi_s]           nodes of shape s
    x_ks    integer in [0, xub_ks]            slots of stage k on shape s (only where k runs on s)
    u_k     continuous in [0, 1]              unmet fraction of stage k's target
    m_k     continuous in [0, min_slots_k]    missing slots below min_slots (soft: never infeasible)

    Σ_s rate_ks/target_k · x_ks + u_k ≥ 1                 demand, normalised so every row is O(1)
    Σ_k req_kj/cap_sj · x_ks − n_s ≤ 0                    resources of shape s, normalised by capacity
    x_ks − floor(cap_s / req_k) · n_s ≤ 0                 slots per whole node
    Σ_{k∈Q} x_ks / floor(cap_s / req_k) − n_s ≤ 0        Q: stages that cannot share a node pairwise
    min_slots_k ≤ Σ_s x_ks + m_k ;  Σ_s x_ks ≤ max_slots_k
    Σ_s n_s ≤ max_nodes ;  Σ_s price_s · n_s ≤ budget

    minimise  W · (Σ_k u_k + Σ_k m_k / min_slots_k)  +  Σ_s price_s / p_ref · n_s  +  ε · (Σ x + Σ n)

Costs are in units of the cheapest positive price (``p_ref``), so the cheapest node costs 1 and HiGHS's
absolute gap (1e-6) is far below any real price difference. ``W`` is ten times the largest cost the
problem can reach, so meeting demand beats saving money for any shortfall worth more than a tenth of the
whole cluster; when an answer still leaves demand unmet, the order is checked exactly by solving for
minimal unmet alone and, if that does better, re-solving for cost with the unmet total pinned. ``ε``
keeps idle slots and free nodes out. Upper bounds are tightened first (``xub``: the slots the target
needs; ``hi``: the nodes those slots could ever use, and what budget and max_nodes allow).

Two ways to an integer answer, both deterministic:

* **exact** — HiGHS branch-and-bound on the program above with a zero gap. Used when the program has at
  most ``_EXACT_INTEGER_VARS`` integer variables (about 6 stages × 5 shapes); 5–40 ms there. HiGHS's
  root work grows fast beyond that (measured: 20–200 ms at 10 stages × 6 shapes, 0.1–5 s and often no
  proof at 50 stages × 12 shapes), far over a decision's budget.
* **rounded relaxation** — the same program as an LP (about 2 ms at 50 × 12), slots rounded up and nodes
  down, then made whole-node feasible by the plan steps below and improved by closing half-empty nodes
  (:meth:`_Plan.consolidate`). Always run; on small problems the better of the two answers wins (the
  rounding knows about packing, the integer program only about summed resources). About 8 ms at
  50 × 12; on random instances of that size its plans cost 1–4 % (at most 10 %) more per hour than
  what HiGHS finds in 10 s, and on small ones alone it would cost 0.3–3 % more than the exact answer.

Plan steps (:class:`_Plan`): drop slots the targets do not need; pack every shape's slots with
first-fit-decreasing (:mod:`autoscaler.packing`) and give each shape the nodes its slots really need —
summed resources do not guarantee whole-node packing when stages share a shape — adding nodes where
bounds, budget and max_nodes allow, otherwise dropping the slots that cost the targets least and making
up for them on other shapes where there is room; close remaining gaps with room on chosen nodes or new
nodes (cheapest per unit of rate); remove nodes nothing needs. The packing check is the last word: every
returned plan packs with first-fit-decreasing on the returned counts.

Pure: no I/O, no clock, no randomness; the same problem always yields the same selection.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from autoscaler.packing import PackResult, first_fit_decreasing
from autoscaler.types import NodeShape, Placement, UnmetDemand

# Up to this many integer variables the program is also solved exactly (see module docstring).
_EXACT_INTEGER_VARS = 32
# Branch-and-bound nodes per exact solve: a deterministic bound on the work (the best plan found so far
# is used when it is reached); the small problems solved exactly need a handful.
_NODE_LIMIT = 20000
# Moves tried to close half-empty nodes (see _Plan.consolidate); on 50 × 12 the search usually stops
# by itself after 8–12.
_CONSOLIDATE_ATTEMPTS = 16
# A safety net, not a tuning knob: a limit that is hit would make the answer depend on machine speed, so
# it is far above anything seen (the node limit above binds first).
_TIME_LIMIT_S = 10.0
# No stage is ever planned more slots than this, whatever its rates say (a sanity bound: a rate of 1e-300
# per slot would otherwise ask for more slots than any cluster has cores).
_SLOT_LIMIT = 1_000_000
_MIN_RATE_SHARE = 1e-9
# Tolerances for "met" and for float noise in capacities.
_RATE_REL_TOL = 1e-9
_FIT_TOL = 1e-9
# The unmet term is worth this many times the largest reachable cost.
_UNMET_WEIGHT_FACTOR = 10.0
# Total weight of the idle-slot/free-node penalty, in units of the cheapest node.
_EPSILON_TOTAL = 1e-3

Status = Literal["optimal", "partial", "infeasible_bounds"]


def _check_amount(what: str, value: float, *, allow_inf: bool = False) -> None:
    if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")


def _freeze_float(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in values.items()})


def _freeze_int(values: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({str(k): int(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class StageRequirement:
    """What one stage needs: a rate, what one slot takes, and how fast one slot runs on each shape."""

    name: str
    target_rate: float
    """Units of work per second needed (>= 0)."""
    slot_resources: Mapping[str, float]
    """What one slot (task or actor) needs, e.g. ``{"CPU": 1, "GPU": 1}``."""
    per_slot_rate: Mapping[str, float]
    """Shape name → units/s one slot delivers there; shapes missing or at 0 are not eligible."""
    max_slots: int | None = None
    min_slots: int = 0
    """Slots to keep regardless of the target (e.g. actors that exist now); soft, see Selection.reasons."""

    def __post_init__(self) -> None:
        _check_amount(f"stage {self.name!r}: target_rate", self.target_rate)
        for res, amount in self.slot_resources.items():
            _check_amount(f"stage {self.name!r}: slot resource {res!r}", amount)
        for shape, rate in self.per_slot_rate.items():
            _check_amount(f"stage {self.name!r}: per-slot rate on {shape!r}", rate)
        if self.min_slots < 0:
            raise ValueError(f"stage {self.name!r}: min_slots must be >= 0, got {self.min_slots}")
        if self.max_slots is not None:
            if self.max_slots < 0:
                raise ValueError(f"stage {self.name!r}: max_slots must be >= 0, got {self.max_slots}")
            if self.max_slots < self.min_slots:
                raise ValueError(
                    f"stage {self.name!r}: min_slots ({self.min_slots}) is above max_slots ({self.max_slots})"
                )
        object.__setattr__(self, "target_rate", float(self.target_rate))
        # Frozen copies: callers often pass plain dicts, and a frozen dataclass should stay frozen.
        object.__setattr__(self, "slot_resources", _freeze_float(self.slot_resources))
        object.__setattr__(self, "per_slot_rate", _freeze_float(self.per_slot_rate))


def _empty_int_map() -> Mapping[str, int]:
    return MappingProxyType({})


def _empty_reserved() -> Mapping[str, Mapping[str, float]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SelectionProblem:
    """Shapes with bounds and prices, stage requirements, and cluster-wide limits."""

    shapes: tuple[NodeShape, ...]
    stages: tuple[StageRequirement, ...]
    max_nodes: int
    budget_per_hour: float
    """Dollars per hour; ``math.inf`` for no budget."""
    lower: Mapping[str, int] = field(default_factory=_empty_int_map)
    """Extra per-shape lower bounds (e.g. hold what runs now), combined with ``min_count`` by max."""
    upper: Mapping[str, int] = field(default_factory=_empty_int_map)
    """Extra per-shape upper bounds, combined with ``max_count`` by min."""
    reserved: Mapping[str, Mapping[str, float]] = field(default_factory=_empty_reserved)
    """Per shape, resources on every node that stages cannot use (system daemons, a head's share)."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.shapes]
        if len(set(names)) != len(names):
            raise ValueError(f"node shape names must be unique, got {names}")
        stage_names = [k.name for k in self.stages]
        if len(set(stage_names)) != len(stage_names):
            raise ValueError(f"stage names must be unique, got {stage_names}")
        for s in self.shapes:
            _check_amount(f"shape {s.name!r}: price_per_hour", s.price_per_hour)
            for res, amount in s.resources.items():
                _check_amount(f"shape {s.name!r}: resource {res!r}", amount)
            if s.min_count < 0 or s.max_count < 0:
                raise ValueError(f"shape {s.name!r}: min_count and max_count must be >= 0")
            if s.min_count > s.max_count:
                raise ValueError(f"shape {s.name!r}: min_count ({s.min_count}) > max_count ({s.max_count})")
        if self.max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {self.max_nodes}")
        _check_amount("budget_per_hour", self.budget_per_hour, allow_inf=True)
        known = set(names)
        for label, bounds in (("lower", self.lower), ("upper", self.upper)):
            for shape, value in bounds.items():
                if shape not in known:
                    raise ValueError(f"{label} bound for unknown node shape {shape!r}")
                if value < 0:
                    raise ValueError(f"{label} bound for {shape!r} must be >= 0, got {value}")
        for shape, res_map in self.reserved.items():
            if shape not in known:
                raise ValueError(f"reserved resources for unknown node shape {shape!r}")
            for res, amount in res_map.items():
                _check_amount(f"reserved {res!r} on {shape!r}", amount)
        object.__setattr__(self, "lower", _freeze_int(self.lower))
        object.__setattr__(self, "upper", _freeze_int(self.upper))
        object.__setattr__(
            self, "reserved", MappingProxyType({k: _freeze_float(v) for k, v in self.reserved.items()})
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen node counts, where each stage's slots go, and what could not be served."""

    counts: Mapping[str, int]
    """Nodes per shape; every shape of the problem is present."""
    placements: tuple[Placement, ...]
    """Slots per (stage, shape) with at least one slot, sorted by (stage, shape)."""
    unmet: tuple[UnmetDemand, ...]
    """Stages whose target is not met, with the planned rate and why."""
    cost_per_hour: float
    status: Status
    """``optimal``: every target met; ``partial``: some demand unmet (see ``unmet``);
    ``infeasible_bounds``: the minimum counts alone break max_nodes or the budget — the counts are
    those minimums and the stages are placed on them as well as they fit."""
    reasons: tuple[str, ...] = ()
    """Plain-words notes about the plan as a whole (bounds that conflicted, min_slots not kept)."""


# ----------------------------------------------------------------------------------------------------
# Preparation: bounds, eligibility and tightened variable bounds, independent of the solver.


@dataclass(slots=True)
class _Pair:
    stage: int
    shape: int
    rate: float
    per_node: int
    """Slots of this stage that fit on one node of this shape when alone there."""
    xub: int


@dataclass(slots=True)
class _Prepared:
    problem: SelectionProblem
    shapes: tuple[NodeShape, ...]
    stages: tuple[StageRequirement, ...]
    capacity: list[dict[str, float]]
    """Per shape, what one node offers to stages (resources minus reserved)."""
    needs: list[dict[str, float]]
    """Per stage, the positive slot resources."""
    lo: list[int]
    hi: list[int]
    hi_label: list[str]
    hi_solve: list[int]
    """``hi`` tightened to what could ever be useful; only for the solver."""
    pairs: list[_Pair]
    pairs_of_stage: list[list[int]]
    pairs_of_shape: list[list[int]]
    infeasible_bounds: bool
    notes: list[str]


def _fits_one(capacity: Mapping[str, float], need: Mapping[str, float]) -> bool:
    return all(capacity.get(res, 0.0) + _FIT_TOL * (1 + amount) >= amount for res, amount in need.items())


def _floor_ratio(numerator: float, denominator: float) -> int:
    """floor(numerator / denominator) for positive denominators, clipped to [0, _SLOT_LIMIT] so that tiny
    denominators cannot overflow."""
    ratio = numerator / denominator
    return 0 if not ratio > 0 else _SLOT_LIMIT if not ratio < _SLOT_LIMIT else math.floor(ratio)


def _per_node(capacity: Mapping[str, float], need: Mapping[str, float]) -> int | None:
    """Copies of ``need`` that fit on one empty node; None when it needs no resources at all."""
    best: int | None = None
    for res, amount in need.items():
        k = _floor_ratio(capacity.get(res, 0.0) * (1 + _FIT_TOL) + _FIT_TOL, amount)
        best = k if best is None else min(best, k)
    return best


def _usable_rate(rate: float, target: float) -> bool:
    """A slot must deliver at least a billionth of the target to count: HiGHS drops matrix entries below
    1e-9 anyway, and a smaller share could not matter within the slot limit."""
    return rate > 0 and rate >= target * _MIN_RATE_SHARE


def _slots_needed(target: float, rate: float) -> int:
    ratio = target / rate
    if not ratio < _SLOT_LIMIT:
        # Also catches a rate so small that the ratio overflows to inf.
        return _SLOT_LIMIT
    return max(0, math.ceil(ratio - _RATE_REL_TOL * max(1.0, ratio)))


def _prepare(problem: SelectionProblem) -> _Prepared:
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
    if min_cost > budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL:
        infeasible = True
        notes.append(
            f"the minimum node counts cost {min_cost:.2f} $/h, over the budget {budget:.2f} $/h; "
            "keeping the minimums"
        )

    pairs: list[_Pair] = []
    pairs_of_stage: list[list[int]] = [[] for _ in stages]
    pairs_of_shape: list[list[int]] = [[] for _ in shapes]
    for ki, k in enumerate(stages):
        for si, s in enumerate(shapes):
            rate = k.per_slot_rate.get(s.name, 0.0)
            if not _usable_rate(rate, k.target_rate) or not _fits_one(capacity[si], needs[ki]):
                continue
            wanted = max(_slots_needed(k.target_rate, rate), k.min_slots)
            if k.max_slots is not None:
                wanted = min(wanted, k.max_slots)
            per_node = _per_node(capacity[si], needs[ki])
            if per_node is None:
                # Needs no resources, yet still runs on some node: all of them fit on one.
                per_node = max(1, wanted)
            xub = min(wanted, per_node * (lo[si] if infeasible else hi[si]))
            if xub <= 0:
                continue
            pairs_of_stage[ki].append(len(pairs))
            pairs_of_shape[si].append(len(pairs))
            pairs.append(_Pair(ki, si, rate, per_node, xub))

    hi_solve: list[int] = []
    for si, s in enumerate(shapes):
        if infeasible:
            hi_solve.append(lo[si])
            continue
        useful = sum(math.ceil(pairs[p].xub / pairs[p].per_node) for p in pairs_of_shape[si])
        cap = min(hi[si], useful, problem.max_nodes)
        if s.price_per_hour > 0 and math.isfinite(budget):
            cap = min(cap, _floor_ratio(budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL, s.price_per_hour))
        hi_solve.append(max(lo[si], cap))

    return _Prepared(
        problem=problem,
        shapes=shapes,
        stages=stages,
        capacity=capacity,
        needs=needs,
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


def _conflicts(prep: _Prepared, si: int) -> dict[int, set[int]]:
    """For each pair on shape ``si``, the other pairs whose slots cannot share one of its nodes with it."""
    on_shape = prep.pairs_of_shape[si]
    needs = [prep.needs[prep.pairs[p].stage] for p in on_shape]
    resources = sorted({r for need in needs for r in need})
    if not resources:
        return {p: set() for p in on_shape}
    capacity = np.array([prep.capacity[si].get(r, 0.0) for r in resources])
    m = np.array([[need.get(r, 0.0) for r in resources] for need in needs])
    clash = ((m[:, None, :] + m[None, :, :]) > capacity * (1 + _FIT_TOL) + _FIT_TOL).any(axis=2)
    np.fill_diagonal(clash, False)
    return {p: {on_shape[j] for j in np.flatnonzero(clash[i])} for i, p in enumerate(on_shape)}


def _cliques(conflicts: Mapping[int, set[int]]) -> list[tuple[int, ...]]:
    """Greedy maximal sets of pairs that pairwise conflict (a node holds slots of at most one of them),
    one grown from each pair; duplicates and singletons dropped."""
    found: dict[tuple[int, ...], None] = {}
    for p in sorted(conflicts):
        clique = [p]
        for q in sorted(conflicts[p]):
            if all(q in conflicts[c] for c in clique):
                clique.append(q)
        if len(clique) > 1:
            found[tuple(sorted(clique))] = None
    return list(found)


# ----------------------------------------------------------------------------------------------------
# The integer program.


@dataclass(slots=True)
class _Solution:
    counts: list[int]
    slots: list[int]
    """Per pair."""


class _Program:
    """The matrices of one problem; solved up to three times for an exact lexicographic answer."""

    def __init__(self, prep: _Prepared) -> None:
        self.prep = prep
        shapes, stages, pairs = prep.shapes, prep.stages, prep.pairs
        n_shapes, n_pairs = len(shapes), len(pairs)
        self.demand_stages = [ki for ki, k in enumerate(stages) if k.target_rate > 0]
        self.min_stages = [ki for ki, k in enumerate(stages) if k.min_slots > 0]
        self.off_x = n_shapes
        self.off_u = self.off_x + n_pairs
        self.off_m = self.off_u + len(self.demand_stages)
        n_vars = self.off_m + len(self.min_stages)
        self.n_vars = n_vars
        self.n_int = n_shapes + n_pairs

        lb = np.zeros(n_vars)
        ub = np.zeros(n_vars)
        lb[:n_shapes] = prep.lo
        ub[:n_shapes] = prep.hi_solve
        for p, pair in enumerate(pairs):
            ub[self.off_x + p] = pair.xub
        ub[self.off_u : self.off_m] = 1.0
        for i, ki in enumerate(self.min_stages):
            ub[self.off_m + i] = stages[ki].min_slots
        self.bounds = Bounds(lb, ub)
        self.integrality = np.zeros(n_vars)
        self.integrality[: self.n_int] = 1

        prices = np.array([s.price_per_hour for s in shapes], dtype=float)
        positive = prices[prices > 0]
        p_ref = float(positive.min()) if positive.size else 1.0
        cost = prices / p_ref
        max_cost = float(cost @ np.asarray(prep.hi_solve, dtype=float))
        budget = prep.problem.budget_per_hour
        if math.isfinite(budget) and not prep.infeasible_bounds:
            max_cost = min(max_cost, budget / p_ref)
        n_int_total = max(1, n_shapes + int(sum(pair.xub for pair in pairs)))
        eps = _EPSILON_TOTAL / n_int_total
        self.unmet_weight = _UNMET_WEIGHT_FACTOR * (max_cost + 1.0)

        # The unmet measure: u_k counts fully, m_k per missing slot as a fraction of min_slots.
        unmet_vec = np.zeros(n_vars)
        unmet_vec[self.off_u : self.off_m] = 1.0
        for i, ki in enumerate(self.min_stages):
            unmet_vec[self.off_m + i] = 1.0 / stages[ki].min_slots
        self.unmet_vec = unmet_vec
        c = np.full(n_vars, eps)
        c[:n_shapes] += cost
        c[self.off_u :] = self.unmet_weight * unmet_vec[self.off_u :]
        self.weighted = c

        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        row_lb: list[float] = []
        row_ub: list[float] = []

        def add_row(entries: list[tuple[int, float]], low: float, high: float) -> None:
            r = len(row_lb)
            for col, val in entries:
                rows.append(r)
                cols.append(col)
                vals.append(val)
            row_lb.append(low)
            row_ub.append(high)

        for i, ki in enumerate(self.demand_stages):
            target = stages[ki].target_rate
            entries = [(self.off_x + p, pairs[p].rate / target) for p in prep.pairs_of_stage[ki]]
            entries.append((self.off_u + i, 1.0))
            add_row(entries, 1.0, math.inf)
        for i, ki in enumerate(self.min_stages):
            entries = [(self.off_x + p, 1.0) for p in prep.pairs_of_stage[ki]]
            entries.append((self.off_m + i, 1.0))
            add_row(entries, float(stages[ki].min_slots), math.inf)
        for ki, k in enumerate(stages):
            own = prep.pairs_of_stage[ki]
            if k.max_slots is not None and sum(pairs[p].xub for p in own) > k.max_slots:
                add_row([(self.off_x + p, 1.0) for p in own], -math.inf, float(k.max_slots))
        for si in range(n_shapes):
            on_shape = prep.pairs_of_shape[si]
            for p in on_shape:
                add_row([(self.off_x + p, 1.0), (si, -float(pairs[p].per_node))], -math.inf, 0.0)
            # With one stage on a shape the per-node rows above are exact; the summed rows matter only
            # when stages share a shape.
            if len(on_shape) < 2:
                continue
            # Slots that cannot share a node with each other (3-CPU and 2-CPU slots on 4-CPU nodes) each
            # take nodes of their own; the summed rows would let them share and leave packing to find
            # the missing nodes later. A set of mutually conflicting stages therefore needs, together,
            # at least Σ x / (slots per node) nodes.
            conflicts = _conflicts(prep, si)
            for clique in _cliques(conflicts):
                entries = [(self.off_x + p, 1.0 / pairs[p].per_node) for p in clique]
                add_row([*entries, (si, -1.0)], -math.inf, 0.0)
            # A slot that cannot share a node with any other stage here (e.g. 4 CPUs on a 4-CPU GPU
            # node) blocks its nodes for everybody: count those nodes in every resource row as well.
            exclusive = {p for p in on_shape if len(conflicts[p]) == len(on_shape) - 1}
            shared = [p for p in on_shape if p not in exclusive]
            base = [(self.off_x + p, 1.0 / pairs[p].per_node) for p in sorted(exclusive)]
            resources = sorted({r for p in shared for r in prep.needs[pairs[p].stage]})
            for res in resources:
                users = [p for p in shared if res in prep.needs[pairs[p].stage]]
                if len(users) + len(base) < 2:
                    continue
                cap = prep.capacity[si][res]
                entries = [*base, *((self.off_x + p, prep.needs[pairs[p].stage][res] / cap) for p in users)]
                entries.append((si, -1.0))
                add_row(entries, -math.inf, 0.0)
        if not prep.infeasible_bounds:
            if sum(prep.hi_solve) > prep.problem.max_nodes:
                add_row([(si, 1.0) for si in range(n_shapes)], -math.inf, float(prep.problem.max_nodes))
            if math.isfinite(budget) and float(prices @ np.asarray(prep.hi_solve, dtype=float)) > budget:
                scale = budget if budget > 0 else 1.0
                add_row(
                    [(si, prices[si] / scale) for si in range(n_shapes) if prices[si] > 0],
                    -math.inf,
                    budget / scale,
                )
        self.rows, self.cols, self.vals = rows, cols, vals
        self.row_lb, self.row_ub = row_lb, row_ub
        self.options = {
            "time_limit": _TIME_LIMIT_S,
            "node_limit": _NODE_LIMIT,
            "mip_rel_gap": 0.0,
            "presolve": True,
        }

    def solve(
        self, objective: np.ndarray, unmet_cap: float | None = None, relax: bool = False
    ) -> np.ndarray | None:
        rows, cols, vals = list(self.rows), list(self.cols), list(self.vals)
        row_lb, row_ub = list(self.row_lb), list(self.row_ub)
        if unmet_cap is not None:
            r = len(row_lb)
            for col in range(self.off_u, self.n_vars):
                rows.append(r)
                cols.append(col)
                vals.append(float(self.unmet_vec[col]))
            row_lb.append(-math.inf)
            row_ub.append(unmet_cap)
        constraints = []
        if row_lb:
            matrix = csr_array((vals, (rows, cols)), shape=(len(row_lb), self.n_vars))
            constraints.append(LinearConstraint(matrix, np.asarray(row_lb), np.asarray(row_ub)))
        res = milp(
            objective,
            integrality=np.zeros(self.n_vars) if relax else self.integrality,
            bounds=self.bounds,
            constraints=constraints,
            options=self.options,
        )
        if res.x is None:
            return None
        return np.asarray(res.x, dtype=float)

    def unmet_of(self, x: np.ndarray) -> float:
        return float(self.unmet_vec @ x)

    def to_solution(self, x: np.ndarray) -> _Solution:
        ints = np.rint(x[: self.n_int]).astype(int)
        n_shapes = len(self.prep.shapes)
        return _Solution(counts=[int(v) for v in ints[:n_shapes]], slots=[int(v) for v in ints[n_shapes:]])


def _unmet_floor(prep: _Prepared) -> float:
    """A lower bound on the unmet measure: each stage alone, with its best slots up to max_slots and as
    many as its shapes' bounds hold. When the weighted answer reaches it, it is lexicographically optimal
    and the checking solves can be skipped (the common case: unmet because of max_slots or max_count)."""
    floor = 0.0
    for ki, k in enumerate(prep.stages):
        own = sorted(prep.pairs_of_stage[ki], key=lambda p: -prep.pairs[p].rate)
        room = _SLOT_LIMIT if k.max_slots is None else k.max_slots
        rate = 0.0
        slots = 0
        for p in own:
            take = min(prep.pairs[p].xub, room - slots)
            rate += take * prep.pairs[p].rate
            slots += take
        if k.target_rate > 0:
            floor += max(0.0, 1.0 - rate / k.target_rate)
        if k.min_slots > 0:
            floor += max(0, k.min_slots - sum(prep.pairs[p].xub for p in own)) / k.min_slots
    return floor


def _solve_exact(program: _Program) -> _Solution | None:
    """The integer program itself, in lexicographic order (unmet first, then cost)."""
    x = program.solve(program.weighted)
    if x is None:
        return None
    unmet = program.unmet_of(x)
    tol = 1e-6 * (1.0 + unmet)
    if unmet > _unmet_floor(program.prep) + tol:
        # The weights favour meeting demand but cannot guarantee it for tiny shortfalls: check exactly.
        best = program.solve(program.unmet_vec)
        if best is not None:
            least = program.unmet_of(best)
            if least < unmet - tol:
                pinned = program.solve(program.weighted, unmet_cap=least + 1e-6 * (1.0 + least))
                x = pinned if pinned is not None else best
    return program.to_solution(x)


def _solve_relaxed(program: _Program) -> _Solution | None:
    """The LP relaxation, rounded; the plan steps afterwards make it whole-node feasible."""
    x = program.solve(program.weighted, relax=True)
    if x is None:
        return None
    # Slots round up (the trim step takes back what the targets do not need). Node counts round down,
    # which keeps them within max_nodes and the budget; packing then adds the nodes the slots need
    # wherever those limits leave room.
    n_shapes = len(program.prep.shapes)
    slots = np.ceil(x[n_shapes : program.n_int] - 1e-6).astype(int)
    nodes = np.floor(x[:n_shapes] + 1e-6).astype(int)
    counts = [
        max(lo, min(int(v), hi)) for v, lo, hi in zip(nodes, program.prep.lo, program.prep.hi, strict=True)
    ]
    return _Solution(counts=counts, slots=[max(0, int(v)) for v in slots])


# ----------------------------------------------------------------------------------------------------
# After the solver: trim, pack, repair, explain.


def _getter(indices: Sequence[int]) -> Callable[[Sequence[int]], tuple[int, ...]]:
    """A fast ``lambda xs: tuple(xs[i] for i in indices)``."""
    if not indices:
        return lambda _xs: ()
    if len(indices) == 1:
        only = indices[0]
        return lambda xs: (xs[only],)
    getter = operator.itemgetter(*indices)
    return lambda xs: getter(xs)


class _Plan:
    """A plan being checked and repaired (mutable); the final Selection is built from it."""

    def __init__(self, prep: _Prepared, sol: _Solution, *, thorough: bool) -> None:
        self.prep = prep
        self.thorough = thorough
        self.counts = list(sol.counts)
        self.slots = list(sol.slots)
        self.dropped: dict[tuple[int, int], int] = {}
        self._packs: dict[tuple[int, int, tuple[int, ...]], PackResult] = {}
        # The repair loops ask for stage rates and per-shape slot vectors thousands of times per call:
        # C-level getters keep that from dominating the run time.
        self._stage_slots = [_getter(own) for own in prep.pairs_of_stage]
        self._stage_rates = [tuple(prep.pairs[p].rate for p in own) for own in prep.pairs_of_stage]
        self._shape_slots = [_getter(own) for own in prep.pairs_of_shape]

    def rate(self, ki: int) -> float:
        return float(sum(map(operator.mul, self._stage_rates[ki], self._stage_slots[ki](self.slots))))

    def stage_slots(self, ki: int) -> int:
        return sum(self._stage_slots[ki](self.slots))

    def rate_met(self, ki: int) -> bool:
        target = self.prep.stages[ki].target_rate
        return self.rate(ki) >= target * (1 - _RATE_REL_TOL) - _RATE_REL_TOL

    def met(self, ki: int) -> bool:
        """Target rate and min_slots both met."""
        return self.rate_met(ki) and self.stage_slots(ki) >= self.prep.stages[ki].min_slots

    def cost(self) -> float:
        return sum(s.price_per_hour * n for s, n in zip(self.prep.shapes, self.counts, strict=True))

    def pack(self, si: int, count: int | None = None) -> PackResult:
        prep = self.prep
        n = self.counts[si] if count is None else count
        on_shape = prep.pairs_of_shape[si]
        key = (si, n, self._shape_slots[si](self.slots))
        if (cached := self._packs.get(key)) is None:
            items = [
                (prep.stages[prep.pairs[p].stage].name, prep.needs[prep.pairs[p].stage], self.slots[p])
                for p in on_shape
                if self.slots[p] > 0
            ]
            cached = first_fit_decreasing(prep.capacity[si], n, items)
            self._packs[key] = cached
        return cached

    def headroom(self, si: int) -> int:
        """Nodes of shape ``si`` that could still be added within its bound, max_nodes and the budget."""
        prep = self.prep
        if prep.infeasible_bounds:
            return 0
        room = min(prep.hi[si] - self.counts[si], prep.problem.max_nodes - sum(self.counts))
        price = prep.shapes[si].price_per_hour
        budget = prep.problem.budget_per_hour
        if price > 0 and math.isfinite(budget):
            room = min(room, _floor_ratio(budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL - self.cost(), price))
        return max(0, room)

    def _slot_cost(self, p: int) -> float:
        """Node cost one slot of pair ``p`` takes, per unit of rate it delivers."""
        pair = self.prep.pairs[p]
        return self.prep.shapes[pair.shape].price_per_hour / pair.per_node / pair.rate

    def trim_slots(self) -> None:
        """Keep each stage within max_slots and drop slots the target does not need, dearest first
        (rounding up a relaxed answer, or the solver's tolerance, can leave some)."""
        prep = self.prep
        for ki, k in enumerate(prep.stages):
            own = sorted(prep.pairs_of_stage[ki], key=lambda p: (-self._slot_cost(p), -prep.pairs[p].rate, p))
            count = self.stage_slots(ki)
            if k.max_slots is not None:
                # With slots capped, rate per slot is what counts: give up the slowest first.
                for p in sorted(own, key=lambda p: (prep.pairs[p].rate, p)):
                    cut = min(self.slots[p], count - k.max_slots)
                    if cut > 0:
                        self.slots[p] -= cut
                        count -= cut
            total = self.rate(ki)
            floor = k.target_rate * (1 - _RATE_REL_TOL) - _RATE_REL_TOL
            for p in own:
                rate = prep.pairs[p].rate
                spare = min(self.slots[p], count - k.min_slots, _floor_ratio(total - floor, rate))
                if spare > 0:
                    self.slots[p] -= spare
                    count -= spare
                    total -= spare * rate

    def settle_nodes(self) -> None:
        """Set each shape's count to what its slots need to pack onto whole nodes (first-fit-decreasing),
        within the bounds; slots that cannot get a node are dropped and reported."""
        prep = self.prep
        needed: list[int] = []
        for si in range(len(prep.shapes)):
            unlimited = self.pack(si, max(prep.hi[si], self.counts[si]))
            needed.append(unlimited.used_nodes)
            # Shrink first, so that budget and max_nodes freed here are there for shapes that must grow.
            self.counts[si] = max(prep.lo[si], min(self.counts[si], needed[si]))
        self._enforce_limits()
        for si in range(len(prep.shapes)):
            if needed[si] > self.counts[si]:
                self.counts[si] += min(needed[si] - self.counts[si], self.headroom(si))
        for si in range(len(prep.shapes)):
            if not self.pack(si).ok:
                self._drop_to_fit(si)

    def _drop_to_fit(self, si: int) -> None:
        """Take slots off shape ``si`` until they pack on its nodes, and make up for them elsewhere where
        possible. Candidates: what first-fit could not place, or the fewest slots of one stage; each is
        tried (with the make-up step) and the one leaving the least unmet demand, then cost, is kept."""
        prep = self.prep
        by_name = {prep.stages[prep.pairs[p].stage].name: p for p in prep.pairs_of_shape[si]}
        candidates = [{by_name[name]: n for name, n in sorted(self.pack(si).unplaced.items())}]
        if not self.thorough:
            # Large problems: what first-fit could not place (the smallest slots); searching every
            # stage's fewest would cost a packing per step per stage.
            self._apply_drop(si, candidates[0])
            return
        for p in prep.pairs_of_shape[si]:
            have = self.slots[p]
            fewest = None
            low, high = 1, have
            while low <= high:
                mid = (low + high) // 2
                self.slots[p] = have - mid
                if self.pack(si).ok:
                    fewest, high = mid, mid - 1
                else:
                    low = mid + 1
            self.slots[p] = have
            if fewest is not None:
                candidates.append({p: fewest})
        every_stage = range(len(prep.stages))
        best: tuple[float, float, int] | None = None
        for i, drop in enumerate(candidates):
            saved = (list(self.counts), list(self.slots), dict(self.dropped))
            self._apply_drop(si, drop)
            key = (round(self.unmet_of(every_stage, self.slots), 9), round(self.cost(), 9), i)
            if best is None or key < best:
                best = key
            self.counts, self.slots, self.dropped = saved
        assert best is not None
        self._apply_drop(si, candidates[best[2]])

    def _apply_drop(self, si: int, drop: Mapping[int, int]) -> None:
        prep = self.prep
        for p, n in drop.items():
            self.slots[p] -= n
            key = (prep.pairs[p].stage, si)
            self.dropped[key] = self.dropped.get(key, 0) + n
        self.fill(sorted({prep.pairs[p].stage for p in drop}), closed=si)

    def _enforce_limits(self) -> None:
        """Never exceed max_nodes or the budget (the solvers' answers already respect them; this guards
        against rounding): remove nodes above the lower bounds, dearest shapes first."""
        prep = self.prep
        if prep.infeasible_bounds:
            return
        budget = prep.problem.budget_per_hour
        order = sorted(range(len(prep.shapes)), key=lambda si: (-prep.shapes[si].price_per_hour, si))
        for si in order:
            while self.counts[si] > prep.lo[si] and (
                sum(self.counts) > prep.problem.max_nodes
                or self.cost() > budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL
            ):
                self.counts[si] -= 1

    def _want(self, ki: int, p: int) -> int:
        """Slots of pair ``p`` that would close stage ``ki``'s gap (rate and min_slots), within max_slots."""
        k = self.prep.stages[ki]
        short = k.target_rate - self.rate(ki)
        want = _slots_needed(short, self.prep.pairs[p].rate) if short > 0 else 0
        want = max(want, k.min_slots - self.stage_slots(ki))
        if k.max_slots is not None:
            want = min(want, max(0, k.max_slots - self.stage_slots(ki)))
        return want

    def _grow(self, p: int, want: int) -> int:
        """Add up to ``want`` slots of pair ``p`` where its shape's nodes have room; returns how many."""
        pair = self.prep.pairs[p]
        base = self.slots[p]
        guess = self.pack(pair.shape).room_for(self.prep.needs[pair.stage], want)
        if guess == 0:
            return 0
        self.slots[p] = base + guess
        if self.pack(pair.shape).ok:
            return guess
        # Repacking reordered the items and lost room somewhere: settle for fewer, by bisection. Only
        # counts that were checked to pack are ever kept.
        low, high = 0, guess - 1
        while low < high:
            mid = (low + high + 1) // 2
            self.slots[p] = base + mid
            if self.pack(pair.shape).ok:
                low = mid
            else:
                high = mid - 1
        self.slots[p] = base + low
        return low

    def fill(self, stages: Sequence[int] | None = None, closed: int | None = None) -> None:
        """Close gaps that dropped slots, rounding or the solver's tolerance left: first with room on the
        nodes already chosen, then with new nodes where bounds, max_nodes and budget allow, cheapest per
        unit of rate first. ``closed`` is a shape that gets no new node (the one being consolidated)."""
        prep = self.prep
        todo = [ki for ki in (range(len(prep.stages)) if stages is None else stages) if not self.met(ki)]
        for ki in todo:
            for p in sorted(prep.pairs_of_stage[ki], key=lambda p: (-prep.pairs[p].rate, p)):
                if self.met(ki):
                    break
                if self.counts[prep.pairs[p].shape] > 0 and (want := self._want(ki, p)) > 0:
                    self._grow(p, want)
        for ki in todo:
            while not self.met(ki):
                best: tuple[float, float, int] | None = None
                for p in prep.pairs_of_stage[ki]:
                    pair = prep.pairs[p]
                    if pair.shape == closed:
                        continue
                    want = self._want(ki, p)
                    if want <= 0 or self.headroom(pair.shape) < 1:
                        continue
                    per_new_node = min(pair.per_node, want) * pair.rate
                    key = (prep.shapes[pair.shape].price_per_hour / per_new_node, -pair.rate, p)
                    if best is None or key < best:
                        best = key
                if best is None:
                    break
                p = best[2]
                self.counts[prep.pairs[p].shape] += 1
                if self._grow(p, self._want(ki, p)) == 0:
                    # Cannot happen (one slot always fits an empty node); never loop on it.
                    self.counts[prep.pairs[p].shape] -= 1
                    break

    def unmet_of(self, stages: Sequence[int], slots: Sequence[int]) -> float:
        """What the integer program minimises first, for ``stages`` if the slots were ``slots``: summed
        unmet fraction of the targets, plus missing min_slots as a fraction of min_slots."""
        total = 0.0
        for ki in stages:
            k = self.prep.stages[ki]
            if k.target_rate > 0:
                rate = sum(map(operator.mul, self._stage_rates[ki], self._stage_slots[ki](slots)))
                total += max(0.0, 1.0 - rate / k.target_rate)
            if k.min_slots > 0:
                total += max(0, k.min_slots - sum(self._stage_slots[ki](slots))) / k.min_slots
        return total

    def _last_node_waste(self, si: int) -> float:
        """Price of the least-used node of shape ``si`` times the share of it left idle."""
        if self.counts[si] <= self.prep.lo[si]:
            return 0.0
        packed = self.pack(si)
        used = packed.used_nodes
        if used < self.counts[si]:
            return self.prep.shapes[si].price_per_hour
        capacity = self.prep.capacity[si]
        left = packed.residual[used - 1]
        busy = max((1.0 - left.get(r, 0.0) / c for r, c in capacity.items() if c > 0), default=1.0)
        return self.prep.shapes[si].price_per_hour * (1.0 - busy)

    def _evict_last_node(self, si: int) -> list[int]:
        """Take every slot off the shape's last (least-used) node."""
        packed = self.pack(si)
        used = packed.used_nodes
        prep = self.prep
        by_name = {prep.stages[prep.pairs[p].stage].name: p for p in prep.pairs_of_shape[si]}
        self.counts[si] = max(self.prep.lo[si], min(self.counts[si], used) - 1)
        touched = []
        if used > 0:
            for name, count in packed.nodes[used - 1].items():
                self.slots[by_name[name]] -= count
                touched.append(self.prep.pairs[by_name[name]].stage)
        return touched

    def consolidate(self, attempts: int) -> None:
        """Close half-empty nodes whose work fits more cheaply elsewhere: rounding a relaxed answer opens
        a node of every shape the relaxation used a sliver of, and this takes most of those back.

        Each attempt empties the last (least-used) node of the shape wasting the most money, moves its
        slots into room elsewhere or onto cheaper new nodes, and keeps the change only if the plan got
        cheaper without serving less. Stops when every shape was tried on the current plan, or after
        ``attempts`` (a fixed count, not a clock, so the answer never depends on machine speed)."""
        prep = self.prep
        tried: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
        while attempts > 0:
            ranked = sorted(
                ((w, si) for si in range(len(prep.shapes)) if (w := self._last_node_waste(si)) > 0),
                key=lambda t: (-t[0], t[1]),
            )
            state = (tuple(self.counts), tuple(self.slots))
            todo = [si for _, si in ranked if (si, *state) not in tried]
            if not todo:
                return
            si = todo[0]
            tried.add((si, *state))
            attempts -= 1
            saved = (list(self.counts), list(self.slots), dict(self.dropped))
            before_cost = self.cost()
            touched = sorted(set(self._evict_last_node(si)))
            before_unmet = self.unmet_of(touched, saved[1])
            self.fill(touched, closed=si)
            self.shrink_nodes()
            if (
                self.cost() < before_cost - 1e-9
                and self.unmet_of(touched, self.slots) <= before_unmet + 1e-9
                and all(self.pack(sj).ok for sj in range(len(prep.shapes)))
            ):
                continue
            self.counts, self.slots, self.dropped = saved

    def shrink_nodes(self) -> None:
        """Drop nodes the final slots do not need (e.g. free shapes, or room left after trimming)."""
        for si in range(len(self.prep.shapes)):
            used = self.pack(si).used_nodes
            self.counts[si] = max(self.prep.lo[si], min(self.counts[si], used))


def _needs_text(need: Mapping[str, float]) -> str:
    return ", ".join(f"{r}: {a:g}" for r, a in sorted(need.items())) or "nothing"


def _unmet_reason(plan: _Plan, ki: int) -> str:
    prep = plan.prep
    k = prep.stages[ki]
    rated = {si for si, s in enumerate(prep.shapes) if k.per_slot_rate.get(s.name, 0.0) > 0}
    usable = {si for si in rated if _usable_rate(k.per_slot_rate[prep.shapes[si].name], k.target_rate)}
    fitting = {si for si in range(len(prep.shapes)) if _fits_one(prep.capacity[si], prep.needs[ki])}
    eligible = sorted(usable & fitting)
    if not rated:
        return "no throughput estimate on any shape"
    if not usable:
        return "throughput estimates too small to use (one slot would deliver under 1e-9 of the target)"
    if not fitting:
        return f"no node shape can run it (needs {_needs_text(prep.needs[ki])})"
    if not eligible:
        names = ", ".join(prep.shapes[si].name for si in sorted(fitting))
        return f"no throughput estimate on any shape that can run it ({names})"
    reasons: list[str] = []
    if prep.infeasible_bounds:
        reasons.append("node counts held at their minimums, which already exceed max_nodes or the budget")
    if k.max_slots is not None and plan.stage_slots(ki) >= k.max_slots:
        reasons.append(f"capped by max_slots {k.max_slots}")
    for (stage, si), missing in sorted(plan.dropped.items()):
        if stage == ki:
            reasons.append(f"{missing} slot(s) do not pack onto whole {prep.shapes[si].name} nodes")
    budget = prep.problem.budget_per_hour
    budget_blocks = nodes_blocks = False
    for si in eligible:
        if plan.counts[si] >= prep.hi[si]:
            reasons.append(f"capped by {prep.hi_label[si]}")
            continue
        if sum(plan.counts) + 1 > prep.problem.max_nodes:
            nodes_blocks = True
        if plan.cost() + prep.shapes[si].price_per_hour > budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL:
            budget_blocks = True
    if budget_blocks:
        reasons.append(f"capped by budget {budget:.2f} $/h")
    if nodes_blocks:
        reasons.append(f"capped by max_nodes {prep.problem.max_nodes}")
    if not reasons:
        # Every limit had room, yet the plan is short: only a search that stopped early explains it.
        reasons.append("the search stopped before finding more capacity within the limits")
    return "; ".join(dict.fromkeys(reasons))


def _build(prep: _Prepared, plan: _Plan, status_hint: str | None = None) -> Selection:
    prep_shapes = prep.shapes
    placements = sorted(
        (
            Placement(
                stage=prep.stages[pair.stage].name,
                shape=prep_shapes[pair.shape].name,
                slots=plan.slots[p],
                rate=plan.slots[p] * pair.rate,
            )
            for p, pair in enumerate(prep.pairs)
            if plan.slots[p] > 0
        ),
        key=lambda pl: (pl.stage, pl.shape),
    )
    unmet: list[UnmetDemand] = []
    for ki, k in enumerate(prep.stages):
        if plan.rate_met(ki):
            continue
        unmet.append(
            UnmetDemand(
                stage=k.name,
                target_rate=k.target_rate,
                planned_rate=plan.rate(ki),
                reason=status_hint or _unmet_reason(plan, ki),
            )
        )
    notes = list(prep.notes)
    for ki, k in enumerate(prep.stages):
        have = plan.stage_slots(ki)
        if have < k.min_slots:
            notes.append(f"{k.name}: only {have} of min_slots {k.min_slots} slot(s) fit")
    status: Status
    if prep.infeasible_bounds:
        status = "infeasible_bounds"
    elif unmet:
        status = "partial"
    else:
        status = "optimal"
    return Selection(
        counts=MappingProxyType({s.name: plan.counts[si] for si, s in enumerate(prep_shapes)}),
        placements=tuple(placements),
        unmet=tuple(sorted(unmet, key=lambda u: u.stage)),
        cost_per_hour=plan.cost(),
        status=status,
        reasons=tuple(notes),
    )


def _finish(prep: _Prepared, sol: _Solution, *, thorough: bool) -> _Plan:
    plan = _Plan(prep, sol, thorough=thorough)
    plan.trim_slots()
    plan.settle_nodes()
    plan.fill()
    plan.shrink_nodes()
    plan.consolidate(_CONSOLIDATE_ATTEMPTS)
    return plan


def select_shapes(problem: SelectionProblem) -> Selection:
    """The cheapest node counts and slot placements that meet as much of every stage's target as the
    bounds, max_nodes and budget allow. Unmet demand is returned as data, never raised."""
    prep = _prepare(problem)
    if not prep.pairs:
        # Nothing can be placed anywhere: the cheapest plan is the lower bounds, no solver needed.
        return _build(prep, _Plan(prep, _Solution(counts=list(prep.lo), slots=[]), thorough=False))
    program = _Program(prep)
    plans: list[_Plan] = []
    small = program.n_int <= _EXACT_INTEGER_VARS
    if small and (exact := _solve_exact(program)) is not None:
        plans.append(_finish(prep, exact, thorough=True))
    # Always also the rounded relaxation: it is cheap, and where packing forces the exact program's
    # answer to grow, the packing-aware rounding sometimes does better.
    if (relaxed := _solve_relaxed(program)) is not None:
        plans.append(_finish(prep, relaxed, thorough=small))
    if not plans:
        plan = _Plan(prep, _Solution(counts=list(prep.lo), slots=[0] * len(prep.pairs)), thorough=False)
        return _build(prep, plan, status_hint="the solver found no plan")
    every_stage = range(len(prep.stages))
    best = min(
        range(len(plans)),
        key=lambda i: (
            round(plans[i].unmet_of(every_stage, plans[i].slots), 9),
            round(plans[i].cost(), 9),
            i,
        ),
    )
    return _build(prep, plans[best])
