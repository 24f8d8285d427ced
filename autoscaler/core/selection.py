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
needs; ``hi``: the nodes those slots could ever use, and what budget and max_nodes allow). A slots-per-node
row is left out where a summed row of its shape already implies it (``req_kj/cap_sj · floor(cap_s /
req_k) ≥ 1``, e.g. whole-CPU slots on even-CPU nodes): on large programs that is most of them, and the
relaxation solves in a third of the time with a fifth of the rows. The structure of the summed rows (which
stages cannot share a node) depends only on a shape's capacity and the kinds of slot on it and is cached
across calls.

Two ways to an integer answer, both deterministic:

* **exact** — HiGHS branch-and-bound on the program above with a zero gap. Used when the program has at
  most ``_EXACT_INTEGER_VARS`` integer variables (about 6 stages × 5 shapes); 5–40 ms there. HiGHS's
  root work grows fast beyond that (measured: 20–200 ms at 10 stages × 6 shapes, 0.1–5 s and often no
  proof at 50 stages × 12 shapes), far over a decision's budget.
* **rounded relaxation** — the same program as an LP (about 1.5 ms at 50 × 12, HiGHS's dual simplex
  without presolve, called through the binding SciPy ships — ``scipy.optimize.milp``'s own per-call work
  cost as much again), slots rounded up and nodes down, then made whole-node feasible by the plan steps
  below and improved by closing half-empty nodes (:meth:`_Plan.consolidate`). Always run; on small
  problems the better of the two answers wins (the rounding knows about packing, the integer program only
  about summed resources). About 5 ms at 50 × 12 in all; on random instances of that size its plans cost
  1–4 % (at most 10 %) more per hour than what HiGHS finds in 10 s, and on small ones alone it would cost
  0.3–3 % more than the exact answer.

:func:`select_covering` answers "does ``select_shapes`` meet every target, and with which plan" — the
question a decision asks of today's nodes — with the same answer, but proves a "no" from the resources
alone or from the relaxation's duals (weak duality, so whatever the solver's tolerances) before any plan
is rounded, packed and repaired: under a millisecond at 50 × 12 instead of about five.

Plan steps (:class:`_Plan`): drop slots the targets do not need; pack every shape's slots with
first-fit-decreasing (:mod:`autoscaler.core.packing`) and give each shape the nodes its slots really need —
summed resources do not guarantee whole-node packing when stages share a shape — adding nodes where
bounds, budget and max_nodes allow, otherwise dropping the slots that cost the targets least and making
up for them on other shapes where there is room; close remaining gaps with room on chosen nodes or new
nodes (cheapest per unit of rate); remove nodes nothing needs. The packing check is the last word: every
returned plan packs with first-fit-decreasing on the returned counts. Packings are memoised per (shape,
node count, slots); one of the same slots on another node count, or with the copies it could not place
taken away, is derived from a previous one instead of packing again (:meth:`PackResult.resized`).

Pure: no I/O, no clock, no randomness; the same problem always yields the same selection.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from autoscaler.core.packing import Need, PackResult, first_fit, size_key
from autoscaler.types import NodeShape, Placement, UnmetDemand

# Up to this many integer variables the program is also solved exactly (see module docstring).
_EXACT_INTEGER_VARS = 32
# Branch-and-bound nodes per exact solve: a deterministic bound on the work (the best plan found so far
# is used when it is reached); the small problems solved exactly need a handful.
_NODE_LIMIT = 20000
# Moves tried to close half-empty nodes (see _Plan.consolidate); on 50 × 12 the search usually stops
# by itself after 8–12.
_CONSOLIDATE_ATTEMPTS = 16
# HiGHS options for the exact integer program that change how fast it is found, not what is found (zero
# gap either way). The feasibility-jump heuristic costs about 5 ms per call on programs whose root LP nearly
# solves them, as here: on the 1,926 integer programs of the large_24h simulation every answer was the same
# without it and the solves took 45 % of the time (47 s → 21 s, with presolve off as well). Set only where
# this HiGHS has the option.
_MIP_SPEED_OPTIONS: dict[str, bool] = {"mip_heuristic_run_feasibility_jump": False}
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
# A summed resource row stands in for a pair's slots-per-node row when it is at most this much looser.
_IMPLIED_TOL = 1e-12
# How far (relative) a packed plan may overrun a summed row or the budget in the covering proof: first-fit
# and the budget check allow 1e-9, this leaves a wide margin.
_PACKING_OVERRUN = 1e-8
# The proof's margin for float rounding in the bound itself.
_CERTIFICATE_MARGIN = 1e-7

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
        # Checked inline, and described only when wrong: stages are built (and copied with new targets)
        # several times per decision.
        if not 0.0 <= self.target_rate < math.inf:
            _check_amount(f"stage {self.name!r}: target_rate", self.target_rate)
        for res, amount in self.slot_resources.items():
            if not 0.0 <= amount < math.inf:
                _check_amount(f"stage {self.name!r}: slot resource {res!r}", amount)
        for shape, rate in self.per_slot_rate.items():
            if not 0.0 <= rate < math.inf:
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
    need_keys: list[tuple[tuple[str, float], ...]]
    """Per stage, ``needs`` as a sorted tuple (a hashable key for the structure caches)."""
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
    need_keys = [tuple(sorted(need.items())) for need in needs]
    # Whether a slot fits a shape, and how many fit one node, depend only on the slot's resources: many
    # stages share a few kinds of slot, so each kind is worked out once per shape (-1: does not fit).
    per_node_of: dict[tuple[tuple[str, float], ...], list[int | None]] = {}
    for ki, key in enumerate(need_keys):
        if key not in per_node_of:
            per_node_of[key] = [
                _per_node(capacity[si], needs[ki]) if _fits_one(capacity[si], needs[ki]) else -1
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
        # The hot loop of a large problem (stages × shapes): _usable_rate and _slots_needed, inline.
        least_rate = target * _MIN_RATE_SHARE
        for si, name in enumerate(names):
            rate = rates.get(name, 0.0)
            per_node = fits[si]
            if per_node == -1 or not (rate > 0 and rate >= least_rate):
                continue
            ratio = target / rate
            needed = (
                max(0, math.ceil(ratio - _RATE_REL_TOL * max(1.0, ratio)))
                if ratio < _SLOT_LIMIT
                else _SLOT_LIMIT
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


NeedKey = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class _ShapeStructure:
    """Which of the slots on one shape cannot share a node with each other (by position on the shape)."""

    exclusive: tuple[bool, ...]
    """Per position: its slots cannot share a node with any other position's."""
    cliques: tuple[tuple[int, ...], ...]
    """Greedy maximal sets of positions that pairwise conflict (a node holds slots of at most one)."""


# The structure is a pure function of a node's capacity and the kinds of slot on it, and consecutive
# decisions (and the selections within one decision) ask for the same ones again and again. Bounded,
# cleared whole when full; tuples only, which the garbage collector does not need to walk.
_STRUCTURE_CACHE: dict[tuple[NeedKey, tuple[NeedKey, ...]], _ShapeStructure] = {}
_STRUCTURE_CACHE_SIZE = 512


def _shape_structure(capacity: Mapping[str, float], kinds: tuple[NeedKey, ...]) -> _ShapeStructure:
    key = (tuple(sorted(capacity.items())), kinds)
    found = _STRUCTURE_CACHE.get(key)
    if found is None:
        found = _compute_structure(capacity, kinds)
        if len(_STRUCTURE_CACHE) >= _STRUCTURE_CACHE_SIZE:
            _STRUCTURE_CACHE.clear()
        _STRUCTURE_CACHE[key] = found
    return found


def _compute_structure(capacity: Mapping[str, float], kinds: tuple[NeedKey, ...]) -> _ShapeStructure:
    """Two slots conflict when together they overflow a node; only their kinds (what they need) matter,
    and a shape holds few kinds, so conflicts are looked up per pair of kinds."""
    distinct = list(dict.fromkeys(kinds))
    index = {kind: i for i, kind in enumerate(distinct)}
    of = [index[kind] for kind in kinds]
    needs = [dict(kind) for kind in distinct]
    resources = sorted({r for need in needs for r in need})
    clash = [
        [
            any(
                a.get(r, 0.0) + b.get(r, 0.0) > capacity.get(r, 0.0) * (1 + _FIT_TOL) + _FIT_TOL
                for r in resources
            )
            for b in needs
        ]
        for a in needs
    ]
    n = len(kinds)
    if not any(any(row) for row in clash):
        # Nothing conflicts (the common case on large nodes): no cliques, nobody alone.
        return _ShapeStructure((False,) * n, ())
    per_kind = [of.count(k) for k in range(len(distinct))]
    # Conflicts of a position: every position of a clashing kind but itself.
    exclusive = tuple(
        sum(c for k, c in enumerate(per_kind) if clash[of[p]][k]) - clash[of[p]][of[p]] == n - 1
        for p in range(n)
    )
    found: dict[tuple[int, ...], None] = {}
    for p in range(n):
        # Grown from p: every later-checked position (in order) that conflicts with all taken so far.
        row = clash[of[p]]
        if not any(row):
            continue
        clique = [p]
        taken = {of[p]}
        for q in range(n):
            kq = of[q]
            if q != p and row[kq] and all(clash[k][kq] for k in taken):
                clique.append(q)
                taken.add(kq)
        if len(clique) > 1:
            found[tuple(sorted(clique))] = None
    return _ShapeStructure(exclusive, tuple(found))


# ----------------------------------------------------------------------------------------------------
# The integer program.


def _load_highs() -> Any:
    """HiGHS's own Python binding as SciPy ships it (SciPy >= 1.15), or None.

    ``scipy.optimize.milp`` wraps the same solver, but its per-call work in Python (option checks, a
    Python object per variable for the integrality, dual values gathered column by column) cost as much
    as solving the relaxation of a large program. Private to SciPy, hence the fallback to ``milp`` —
    same solver, same options, same answers — when it is missing or has changed.
    """
    try:
        from scipy.optimize._highspy import _core
    except ImportError:  # pragma: no cover - depends on the SciPy version
        return None
    needed = ("_Highs", "HighsLp", "HighsModelStatus", "HighsStatus", "HighsVarType", "MatrixFormat")
    if not all(hasattr(_core, name) for name in needed):  # pragma: no cover - depends on the SciPy version
        return None
    return _core


_HIGHS: Any = _load_highs()


@dataclass(frozen=True, slots=True)
class _Rows:
    """Constraint rows in compressed sparse row form: lower <= A x <= upper."""

    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def plus(self, index: np.ndarray, value: np.ndarray, lower: float, upper: float) -> _Rows:
        """These rows and one more."""
        return _Rows(
            start=np.append(self.start, self.start[-1] + index.size).astype(np.int32),
            index=np.concatenate([self.index, index]).astype(np.int32),
            value=np.concatenate([self.value, value]),
            lower=np.append(self.lower, lower),
            upper=np.append(self.upper, upper),
        )


def _run_highs(
    objective: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: _Rows,
    integrality: np.ndarray | None,
    *,
    presolve: bool,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Minimise ``objective · x`` over the rows and bounds (an LP when ``integrality`` is None): the
    solution and, for an LP, the rows' dual values (None when unavailable); None when there is no solution
    (or, for an integer program, none was found within the limits)."""
    options: dict[str, float | int | str] = {
        "time_limit": _TIME_LIMIT_S,
        "presolve": "on" if presolve else "off",
    }
    if integrality is not None:
        options |= {"mip_max_nodes": _NODE_LIMIT, "mip_rel_gap": 0.0}
    # Options that only make the search faster, set where this HiGHS has them (see _MIP_SPEED_OPTIONS).
    optional = _MIP_SPEED_OPTIONS if integrality is not None else {}
    core = _HIGHS
    if core is None:  # pragma: no cover - depends on the SciPy version
        return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    n_cols, n_rows = objective.size, rows.lower.size
    lp = core.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.col_cost_ = objective
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = rows.lower
    lp.row_upper_ = rows.upper
    matrix = lp.a_matrix_
    matrix.format_ = core.MatrixFormat.kRowwise
    matrix.num_col_ = n_cols
    matrix.num_row_ = n_rows
    matrix.start_ = rows.start
    matrix.index_ = rows.index
    matrix.value_ = rows.value
    if integrality is not None:
        lp.integrality_ = [core.HighsVarType(int(v)) for v in integrality]
    highs = core._Highs()
    ok = core.HighsStatus.kOk
    if highs.setOptionValue("output_flag", False) != ok:  # pragma: no cover - depends on the SciPy version
        return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    for name, value in options.items():
        if highs.setOptionValue(name, value) != ok:  # pragma: no cover - depends on the SciPy version
            return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    for name, value in optional.items():
        highs.setOptionValue(name, value)
    error = core.HighsStatus.kError
    if highs.passModel(lp) == error or highs.run() == error:
        return None
    model = core.HighsModelStatus
    status = highs.getModelStatus()
    if status != model.kOptimal:
        # As milp: an integer program stopped by a limit still has its best plan, if it found one.
        stopped = (model.kTimeLimit, model.kIterationLimit, model.kSolutionLimit)
        if integrality is None or status not in stopped:
            return None
        if not math.isfinite(highs.getInfo().objective_function_value):
            return None
    solution = highs.getSolution()
    x = np.asarray(solution.col_value, dtype=float)
    if integrality is not None or not getattr(solution, "dual_valid", False):
        return x, None
    return x, np.asarray(solution.row_dual, dtype=float)


def _run_milp(
    objective: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: _Rows,
    integrality: np.ndarray | None,
    *,
    presolve: bool,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``_run_highs`` through SciPy's public ``milp`` (slower per call; same solver and options; no duals)."""
    n_cols, n_rows = objective.size, rows.lower.size
    constraints = []
    if n_rows:
        matrix = csr_array((rows.value, rows.index, rows.start), shape=(n_rows, n_cols))
        constraints.append(LinearConstraint(matrix, rows.lower, rows.upper))
    options: dict[str, float | int | bool] = {"time_limit": _TIME_LIMIT_S, "presolve": presolve}
    if integrality is not None:
        options |= {"node_limit": _NODE_LIMIT, "mip_rel_gap": 0.0}
    res = milp(
        objective,
        integrality=np.zeros(n_cols) if integrality is None else integrality,
        bounds=Bounds(lower, upper),
        constraints=constraints,
        options=options,
    )
    if res.x is None:
        return None
    return np.asarray(res.x, dtype=float), None


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
        off_x = self.off_x = n_shapes
        self.off_u = self.off_x + n_pairs
        self.off_m = self.off_u + len(self.demand_stages)
        n_vars = self.off_m + len(self.min_stages)
        self.n_vars = n_vars
        self.n_int = n_shapes + n_pairs

        lb = np.zeros(n_vars)
        ub = np.zeros(n_vars)
        lb[:n_shapes] = prep.lo
        ub[:n_shapes] = prep.hi_solve
        ub[self.off_x : self.off_u] = [pair.xub for pair in pairs]
        ub[self.off_u : self.off_m] = 1.0
        ub[self.off_m :] = [stages[ki].min_slots for ki in self.min_stages]
        self.lower, self.upper = lb, ub
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

        # Rows a packed plan may overrun by float tolerance (see _cover_box): row → (shape, overrun per
        # node); the budget row's index; whether the max_nodes row is there.
        self.tolerant_rows: dict[int, tuple[int, float]] = {}
        self.budget_row: int | None = None
        self.has_max_nodes_row = False
        start: list[int] = [0]
        index: list[int] = []
        value: list[float] = []
        row_lb: list[float] = []
        row_ub: list[float] = []
        inf = math.inf

        def add_row(cols: list[int], vals: list[float], low: float, high: float, *, ordered: bool) -> None:
            # Columns in order, as a compressed sparse matrix has them (a row never names a column twice).
            # Parallel lists rather than (column, value) pairs: a large program has a couple of thousand
            # entries, and a tuple each cost as much again in the garbage collector's young generation.
            if not ordered:
                order = sorted(range(len(cols)), key=cols.__getitem__)
                cols = [cols[i] for i in order]
                vals = [vals[i] for i in order]
            index.extend(cols)
            value.extend(vals)
            start.append(len(index))
            row_lb.append(low)
            row_ub.append(high)

        # Pair indices of a stage or a shape are increasing, and the x columns come after the node columns
        # and before u and m: most rows are built in column order.
        for i, ki in enumerate(self.demand_stages):
            target = stages[ki].target_rate
            own = prep.pairs_of_stage[ki]
            cols = [off_x + p for p in own]
            cols.append(self.off_u + i)
            vals = [pairs[p].rate / target for p in own]
            vals.append(1.0)
            add_row(cols, vals, 1.0, inf, ordered=True)
        for i, ki in enumerate(self.min_stages):
            own = prep.pairs_of_stage[ki]
            cols = [off_x + p for p in own]
            cols.append(self.off_m + i)
            add_row(cols, [1.0] * len(cols), float(stages[ki].min_slots), inf, ordered=True)
        for ki, k in enumerate(stages):
            own = prep.pairs_of_stage[ki]
            if k.max_slots is not None and sum(pairs[p].xub for p in own) > k.max_slots:
                add_row([off_x + p for p in own], [1.0] * len(own), -inf, float(k.max_slots), ordered=True)
        for si in range(n_shapes):
            on_shape = prep.pairs_of_shape[si]
            summed: list[tuple[list[int], list[float], float, bool]] = []
            # Pairs whose own row below (slots per whole node) a summed row already implies.
            implied: set[int] = set()
            # With one stage on a shape the per-node rows are exact; the summed rows matter only when
            # stages share a shape.
            if len(on_shape) >= 2:
                structure = _shape_structure(
                    prep.capacity[si], tuple(prep.need_keys[pairs[p].stage] for p in on_shape)
                )
                # Slots that cannot share a node with each other (3-CPU and 2-CPU slots on 4-CPU nodes)
                # each take nodes of their own; the summed rows would let them share and leave packing to
                # find the missing nodes later. A set of mutually conflicting stages therefore needs,
                # together, at least Σ x / (slots per node) nodes.
                for clique in structure.cliques:
                    members = [on_shape[j] for j in clique]
                    cols = [si, *(off_x + p for p in members)]
                    vals = [-1.0, *(1.0 / pairs[p].per_node for p in members)]
                    summed.append((cols, vals, 0.0, True))
                    implied.update(members)
                # A slot that cannot share a node with any other stage here (e.g. 4 CPUs on a 4-CPU GPU
                # node) blocks its nodes for everybody: count those nodes in every resource row as well.
                exclusive = [p for p, alone in zip(on_shape, structure.exclusive, strict=True) if alone]
                shared = [p for p, alone in zip(on_shape, structure.exclusive, strict=True) if not alone]
                base_cols = [off_x + p for p in exclusive]
                base_vals = [1.0 / pairs[p].per_node for p in exclusive]
                resources = sorted({r for p in shared for r in prep.needs[pairs[p].stage]})
                for res in resources:
                    users = [p for p in shared if res in prep.needs[pairs[p].stage]]
                    if len(users) + len(exclusive) < 2:
                        continue
                    cap = prep.capacity[si][res]
                    cols = [si, *base_cols]
                    vals = [-1.0, *base_vals]
                    for p in users:
                        share = prep.needs[pairs[p].stage][res] / cap
                        cols.append(off_x + p)
                        vals.append(share)
                        # x_p · share <= n implies x_p <= per_node · n when share · per_node >= 1 (up to
                        # float noise far below the solver's tolerance).
                        if share * pairs[p].per_node >= 1.0 - _IMPLIED_TOL:
                            implied.add(p)
                    # First-fit lets a node's last copy overrun by up to 1e-9 · (1 + cap): in this row's
                    # units, with a wide margin, this much per node.
                    # Exclusive and shared pairs interleave: only a row with both needs sorting.
                    ordered = not exclusive
                    summed.append((cols, vals, _PACKING_OVERRUN * (1.0 + cap) / cap, ordered))
                    implied.update(exclusive)
            # Slots per whole node: x_ks <= floor(cap_s / req_k) · n_s, unless a summed row implies it.
            # In a typical large program most of them are implied, and dropping them takes the row count
            # from many hundreds to about a hundred, which is what the simplex time scales with.
            for p in on_shape:
                if p not in implied:
                    add_row([si, off_x + p], [-float(pairs[p].per_node), 1.0], -inf, 0.0, ordered=True)
            for cols, vals, overrun, ordered in summed:
                if overrun > 0:
                    self.tolerant_rows[len(row_lb)] = (si, overrun)
                add_row(cols, vals, -inf, 0.0, ordered=ordered)
        if not prep.infeasible_bounds:
            if sum(prep.hi_solve) > prep.problem.max_nodes:
                self.has_max_nodes_row = True
                add_row(
                    list(range(n_shapes)), [1.0] * n_shapes, -inf, float(prep.problem.max_nodes), ordered=True
                )
            if math.isfinite(budget) and float(prices @ np.asarray(prep.hi_solve, dtype=float)) > budget:
                scale = budget if budget > 0 else 1.0
                self.budget_row = len(row_lb)
                priced = [si for si in range(n_shapes) if prices[si] > 0]
                add_row(priced, [prices[si] / scale for si in priced], -inf, budget / scale, ordered=True)
        self.rows = _Rows(
            start=np.asarray(start, dtype=np.int32),
            index=np.asarray(index, dtype=np.int32),
            value=np.asarray(value, dtype=float),
            lower=np.asarray(row_lb, dtype=float),
            upper=np.asarray(row_ub, dtype=float),
        )

    def solve(
        self, objective: np.ndarray, unmet_cap: float | None = None, relax: bool = False
    ) -> np.ndarray | None:
        rows = self.rows
        if unmet_cap is not None:
            cols = np.arange(self.off_u, self.n_vars, dtype=np.int32)
            rows = rows.plus(cols, self.unmet_vec[self.off_u :], -math.inf, unmet_cap)
        # Without presolve: on these programs it costs more than it saves, for the relaxation and (measured
        # on the 1,926 integer programs of the large_24h simulation: same answers, 2.2x faster together with
        # _MIP_SPEED_OPTIONS) for the integer program too.
        answer = _run_highs(
            objective, self.lower, self.upper, rows, None if relax else self.integrality, presolve=False
        )
        return None if answer is None else answer[0]

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


def _relax(program: _Program) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The LP relaxation of the weighted program: its solution and row duals (see ``_Program.solve``)."""
    return _run_highs(program.weighted, program.lower, program.upper, program.rows, None, presolve=False)


def _solve_relaxed(
    program: _Program, relaxed: tuple[np.ndarray, np.ndarray | None] | None
) -> _Solution | None:
    """The LP relaxation (``relaxed``, from :func:`_relax`), rounded; the plan steps afterwards make it
    whole-node feasible."""
    if relaxed is None:
        return None
    x = relaxed[0]
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
        # Per shape, its pairs in first-fit-decreasing order (the order depends only on what a slot needs
        # and the node's capacity, not on how many there are), with what their slots need.
        self._pack_order: list[list[tuple[int, str, Need]]] = []
        for si, on_shape in enumerate(prep.pairs_of_shape):
            capacity = prep.capacity[si]
            sizes: dict[Need, tuple[float, float, str]] = {}
            keyed = []
            for p in on_shape:
                ki = prep.pairs[p].stage
                kind = prep.need_keys[ki]
                if (size := sizes.get(kind)) is None:
                    size = sizes[kind] = size_key("", prep.needs[ki], capacity)
                name = prep.stages[ki].name
                keyed.append((size[0], size[1], name, p, kind))
            keyed.sort()
            self._pack_order.append([(p, name, kind) for _, _, name, p, kind in keyed])
        # The packing with the most nodes made so far for each (shape, slots): packings of the same slots
        # on other node counts are derived from it (PackResult.resized) instead of packing again.
        self._widest: dict[tuple[int, tuple[int, ...]], PackResult] = {}
        self._rooms: dict[tuple[int, Need], int] = {}
        self._prices = [s.price_per_hour for s in prep.shapes]
        self._fastest_first = [
            sorted(own, key=lambda p: (-prep.pairs[p].rate, p)) for own in prep.pairs_of_stage
        ]

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
        return float(sum(map(operator.mul, self._prices, self.counts)))

    def pack(self, si: int, count: int | None = None) -> PackResult:
        n = self.counts[si] if count is None else count
        shape_slots = self._shape_slots[si](self.slots)
        key = (si, n, shape_slots)
        if (cached := self._packs.get(key)) is None:
            widest = self._widest.get((si, shape_slots))
            if widest is not None:
                cached = widest.resized(n)
            if cached is None:
                slots = self.slots
                items = [(name, need, slots[p]) for p, name, need in self._pack_order[si] if slots[p] > 0]
                cached = first_fit(self.prep.capacity[si], n, items)
                self._widest[(si, shape_slots)] = cached
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
        packed = self.pack(si)
        names = {p: prep.stages[prep.pairs[p].stage].name for p in drop}
        exactly_unplaced = len(drop) == len(packed.unplaced) and all(
            packed.unplaced.get(names[p]) == n for p, n in drop.items()
        )
        for p, n in drop.items():
            self.slots[p] -= n
            key = (prep.pairs[p].stage, si)
            self.dropped[key] = self.dropped.get(key, 0) + n
        if exactly_unplaced:
            # Without the copies first-fit could not place, it places the rest exactly where it did.
            self._remember(si, self.counts[si], packed.without_unplaced())
        self.fill(sorted({prep.pairs[p].stage for p in drop}), closed=si)

    def _remember(self, si: int, n: int, packed: PackResult) -> None:
        """Record ``packed`` as the packing of shape ``si``'s current slots on ``n`` nodes."""
        shape_slots = self._shape_slots[si](self.slots)
        self._packs[(si, n, shape_slots)] = packed
        widest = self._widest.get((si, shape_slots))
        if widest is None or widest.node_count < n:
            self._widest[(si, shape_slots)] = packed

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

    def _room(self, si: int, ki: int) -> int:
        """Slots of stage ``ki`` that would fit into the leftovers of shape ``si``'s current packing (a first
        guess, see PackResult.room_for)."""
        packed = self.pack(si)
        # Packings live as long as the plan (in _packs), so their ids are stable keys; stages whose slots
        # need the same resources share the answer.
        key = (id(packed), self.prep.need_keys[ki])
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = packed.room_for(self.prep.needs[ki], _SLOT_LIMIT)
        return room

    def _grow(self, p: int, want: int) -> int:
        """Add up to ``want`` slots of pair ``p`` where its shape's nodes have room; returns how many."""
        pair = self.prep.pairs[p]
        base = self.slots[p]
        guess = min(want, self._room(pair.shape, pair.stage))
        if guess <= 0:
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
            for p in self._fastest_first[ki]:
                if self.met(ki):
                    break
                si = prep.pairs[p].shape
                if self.counts[si] > 0 and self._room(si, ki) > 0 and (want := self._want(ki, p)) > 0:
                    self._grow(p, want)
        if not any(self.headroom(si) >= 1 for si in range(len(prep.shapes)) if si != closed):
            # No node can be added anywhere (max_nodes or the budget reached, or every bound): nothing below
            # would change (adding nodes only ever takes room away).
            return
        for ki in todo:
            while not self.met(ki):
                best: tuple[float, float, int] | None = None
                headroom: dict[int, int] = {}
                for p in prep.pairs_of_stage[ki]:
                    pair = prep.pairs[p]
                    if pair.shape == closed:
                        continue
                    if (room := headroom.get(pair.shape)) is None:
                        room = headroom[pair.shape] = self.headroom(pair.shape)
                    if room < 1:
                        continue
                    want = self._want(ki, p)
                    if want <= 0:
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
        last = packed.last_used()
        left = last.left if last is not None else capacity
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
        last = packed.last_used()
        if last is not None:
            for name, count in last.placed.items():
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
    return _select(_prepare(problem))


def _short(rate: float, target: float) -> bool:
    """``rate`` misses ``target`` (the tolerance of _Plan.rate_met)."""
    return not rate >= target * (1 - _RATE_REL_TOL) - _RATE_REL_TOL


def _node_limits(prep: _Prepared) -> list[int]:
    """Per shape, the most nodes any plan can have: its bound, max_nodes and what the budget buys."""
    problem = prep.problem
    budget = problem.budget_per_hour
    limits = []
    for si, s in enumerate(prep.shapes):
        most = min(prep.hi[si], problem.max_nodes)
        if s.price_per_hour > 0 and math.isfinite(budget):
            most = min(most, _floor_ratio(budget * (1 + _RATE_REL_TOL) + _RATE_REL_TOL, s.price_per_hour))
        limits.append(max(prep.lo[si], most))
    return limits


def _resource_short(prep: _Prepared) -> bool:
    """True only when no plan can meet every target because some resource runs out on every node the
    limits allow together — a proof in one pass over the pairs, no solver.

    A stage meeting its target uses at least ``target · min over its shapes of (need / per-slot rate)`` of
    each resource its slots need, and whole nodes hold at most their capacity (plus first-fit's float
    tolerance, see ``_PACKING_OVERRUN``). It settles the common case of today's nodes falling far short of
    the demand; :func:`select_covering` goes on to the linear relaxation when it does not.
    """
    limits = _node_limits(prep)
    supply: dict[str, float] = {}
    for si, capacity in enumerate(prep.capacity):
        for res, cap in capacity.items():
            supply[res] = supply.get(res, 0.0) + limits[si] * (cap + _PACKING_OVERRUN * (1.0 + cap))
    need: dict[str, float] = {}
    for ki, k in enumerate(prep.stages):
        met_at = k.target_rate * (1 - _RATE_REL_TOL) - _RATE_REL_TOL
        own = prep.pairs_of_stage[ki]
        if not met_at > 0 or not own:
            continue
        for res, amount in prep.needs[ki].items():
            least = min(amount / prep.pairs[p].rate for p in own)
            need[res] = need.get(res, 0.0) + met_at * least
    return any(amount > supply.get(res, 0.0) * (1 + _CERTIFICATE_MARGIN) for res, amount in need.items())


@dataclass(frozen=True, slots=True)
class _CoverBox:
    """The relaxation every plan ``select_shapes`` can return lies in (see :func:`select_covering`)."""

    lower: np.ndarray
    upper: np.ndarray
    rows: _Rows
    overrun: np.ndarray
    """Per row, how far a plan may overrun it (float tolerance in packing and in the budget check)."""
    objective: np.ndarray
    """The summed unmet fraction of the targets."""
    allowed: float
    """What that sum can be in a plan whose every target counts as met."""


def _cover_box(prep: _Prepared, program: _Program) -> _CoverBox | None:
    """Every plan keeps each shape within its bounds, max_nodes and the budget, and packs onto whole
    nodes, so it satisfies the program's rows (which only count what whole nodes hold) with node counts up
    to those limits and slots up to what those nodes hold — looser than the solver's own bounds, which are
    tightened to what could be useful. None when slots needing no resources leave slot counts unbounded."""
    stages = prep.stages
    if any(not prep.needs[pair.stage] for pair in prep.pairs):
        return None
    problem = prep.problem
    budget = problem.budget_per_hour
    lower, upper = program.lower.copy(), program.upper.copy()
    upper[: len(prep.shapes)] = _node_limits(prep)
    for p, pair in enumerate(prep.pairs):
        most = pair.per_node * int(upper[pair.shape])
        cap = stages[pair.stage].max_slots
        upper[program.off_x + p] = most if cap is None else min(most, cap)
    n_shapes = len(prep.shapes)
    rows = program.rows
    overrun = np.zeros(rows.lower.size)
    for r, (si, per_node) in program.tolerant_rows.items():
        overrun[r] = per_node * upper[si]
    shapes_col = np.arange(n_shapes, dtype=np.int32)
    if not program.has_max_nodes_row and float(upper[:n_shapes].sum()) > problem.max_nodes:
        rows = rows.plus(shapes_col, np.ones(n_shapes), -math.inf, float(problem.max_nodes))
        overrun = np.append(overrun, 0.0)
    if math.isfinite(budget):
        scale = budget if budget > 0 else 1.0
        slack = _PACKING_OVERRUN * (budget + 1.0) / scale
        if program.budget_row is not None:
            overrun[program.budget_row] = slack
        else:
            prices = np.array([s.price_per_hour for s in prep.shapes], dtype=float) / scale
            rows = rows.plus(shapes_col, prices, -math.inf, budget / scale)
            overrun = np.append(overrun, slack)
    objective = np.zeros(program.n_vars)
    objective[program.off_u : program.off_m] = 1.0
    return _CoverBox(lower, upper, rows, overrun, objective, _allowed_unmet(prep, program))


def _allowed_unmet(prep: _Prepared, program: _Program) -> float:
    """The summed unmet fraction a plan can leave while every target counts as met (_Plan.rate_met)."""
    return sum(_RATE_REL_TOL * (1.0 + 1.0 / prep.stages[ki].target_rate) for ki in program.demand_stages)


def _proves_short(box: _CoverBox, duals: np.ndarray) -> bool:
    """Whether multipliers ``duals`` (for the first rows of ``box.rows``) prove that no plan in the box
    meets every target: weak duality bounds the summed unmet fraction from below, whatever the solver's
    tolerances were, and a bound above ``box.allowed`` leaves no plan whose every target counts as met."""
    y = np.zeros(box.rows.lower.size)
    y[: duals.size] = duals
    threshold = box.allowed + _CERTIFICATE_MARGIN
    return any(
        _dual_bound(box.objective, box.lower, box.upper, box.rows, box.overrun, sign * y) > threshold
        for sign in (1.0, -1.0)
    )


def _dual_bound(
    objective: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: _Rows,
    overrun: np.ndarray,
    y: np.ndarray,
) -> float:
    """A lower bound on ``objective · z`` over every ``z`` within [lower, upper] whose rows hold up to
    ``overrun``: for any multipliers ``y`` (weak duality), min over the box of (objective − Aᵀy)·z plus
    what ``y`` earns on the row bounds it presses against, less what the overruns could take back."""
    y = np.where(((y > 0) & np.isfinite(rows.lower)) | ((y < 0) & np.isfinite(rows.upper)), y, 0.0)
    per_entry = np.repeat(y, np.diff(rows.start))
    reduced = objective - np.bincount(rows.index, weights=rows.value * per_entry, minlength=objective.size)
    box = float(np.minimum(reduced * lower, reduced * upper).sum())
    side = np.where(y > 0, rows.lower, np.where(y < 0, rows.upper, 0.0))
    earned = float(np.where(y != 0, y * np.where(y != 0, side, 0.0), 0.0).sum())
    return box + earned - float(np.abs(y) @ overrun)


def select_covering(problem: SelectionProblem) -> Selection | None:
    """``select_shapes(problem)`` when that plan meets every target (status ``optimal``), else None.

    The same answer as selecting and checking the status, found much sooner when it is None and a proof
    shows it, in this order: some resource runs out on every node the limits allow
    (:func:`_resource_short`, one pass, no solver — about a tenth of a selection); or the linear
    relaxation over every node the bounds, max_nodes and budget allow falls short, proved from its duals
    (weak duality over :func:`_cover_box`, whatever the solver's tolerances; about a third). Only
    otherwise is a plan rounded, packed and repaired. When the targets can be met it costs what
    ``select_shapes`` costs, and returns the very same selection.

    Meant for a decision's "would today's nodes do?" checks (``upper`` = today's counts).
    """
    answer = _covering(problem, need_plan=True)
    return answer if isinstance(answer, Selection) else None


def covers(problem: SelectionProblem) -> bool:
    """Whether ``select_shapes(problem)`` meets every target (status ``optimal``); see
    :func:`select_covering`. A "yes" needs no plan: when the rounded relaxation alone meets every target,
    so does the plan ``select_shapes`` picks (it never leaves more unmet than that one), and the integer
    program is not solved at all."""
    answer = _covering(problem, need_plan=False)
    return answer if isinstance(answer, bool) else answer is not None


def _covering(problem: SelectionProblem, *, need_plan: bool) -> Selection | bool | None:
    """:func:`select_covering`'s answer; with ``need_plan=False`` possibly just True instead of the plan."""
    prep = _prepare(problem)
    if prep.infeasible_bounds:
        return None
    if any(not prep.pairs_of_stage[ki] and _short(0.0, k.target_rate) for ki, k in enumerate(prep.stages)):
        return None
    if not prep.pairs:
        selection = _select(prep)
        return selection if selection.status == "optimal" else None
    if _resource_short(prep):
        return None
    program = _Program(prep)
    relaxed = _relax(program)
    # When even the relaxation leaves demand unmet, try to prove it for every plan: the weighted
    # relaxation's duals, scaled to the unmet measure, are almost always a tight enough proof on their own;
    # when they are not, the relaxation over the box for the unmet measure alone (one more LP) decides.
    relaxed_unmet = math.inf if relaxed is None else float(relaxed[0][program.off_u : program.off_m].sum())
    if relaxed is not None and relaxed_unmet > _allowed_unmet(prep, program):
        box = _cover_box(prep, program)
        if box is not None:
            duals = relaxed[1]
            if duals is not None and _proves_short(box, duals / program.unmet_weight):
                return None
            alone = _run_highs(box.objective, box.lower, box.upper, box.rows, None, presolve=False)
            if alone is not None and alone[1] is not None and _proves_short(box, alone[1]):
                return None
    rounded_plan: _Plan | None = None
    if (rounded := _solve_relaxed(program, relaxed)) is not None:
        rounded_plan = _finish(prep, rounded, thorough=program.n_int <= _EXACT_INTEGER_VARS)
        # _select picks the plan with the least rounded unmet measure; when this one's is 0, the pick's
        # is 0 too, so every target is met within rate_met's tolerance (status "optimal").
        if (
            not need_plan
            and round(rounded_plan.unmet_of(range(len(prep.stages)), rounded_plan.slots), 9) == 0
        ):
            return True
    selection = _select(prep, program, (relaxed,), rounded_plan)
    return selection if selection.status == "optimal" else None


def _select(
    prep: _Prepared,
    program: _Program | None = None,
    relaxed: tuple[tuple[np.ndarray, np.ndarray | None] | None] | None = None,
    rounded_plan: _Plan | None = None,
) -> Selection:
    """``select_shapes`` on a prepared problem; ``program``, ``relaxed`` (``(_relax(program),)``) and the
    finished rounding of ``relaxed`` when the caller has them already."""
    if not prep.pairs:
        # Nothing can be placed anywhere: the cheapest plan is the lower bounds, no solver needed.
        return _build(prep, _Plan(prep, _Solution(counts=list(prep.lo), slots=[]), thorough=False))
    if program is None:
        program = _Program(prep)
    if relaxed is None:
        relaxed = (_relax(program),)
    plans: list[_Plan] = []
    small = program.n_int <= _EXACT_INTEGER_VARS
    if small and (exact := _solve_exact(program)) is not None:
        plans.append(_finish(prep, exact, thorough=True))
    # Always also the rounded relaxation: it is cheap, and where packing forces the exact program's
    # answer to grow, the packing-aware rounding sometimes does better.
    if rounded_plan is not None:
        plans.append(rounded_plan)
    elif (rounded := _solve_relaxed(program, relaxed[0])) is not None:
        plans.append(_finish(prep, rounded, thorough=small))
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
