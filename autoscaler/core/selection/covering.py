"""Whether the selection for a problem meets every target, proved early when it does not.

A decision's "would today's nodes do?" question: the same answer as selecting and checking the status, with
a "no" proved from the resources alone or from the LP relaxation's duals before any plan is repaired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.core.selection.choose import choose
from autoscaler.core.selection.highs import Rows, run_highs
from autoscaler.core.selection.prepared import RATE_REL_TOL, Prepared, node_limits, prepare
from autoscaler.core.selection.problem import Selection, SelectionProblem
from autoscaler.core.selection.program import (
    EXACT_INTEGER_VARS,
    PACKING_OVERRUN,
    Program,
    relax,
    solve_relaxed,
)
from autoscaler.core.selection.repair import Draft, finish
from autoscaler.core.selection.structure import Structures

# The proof's margin for float rounding in the bound itself.
_CERTIFICATE_MARGIN = 1e-7


def _short(rate: float, target: float) -> bool:
    """``rate`` misses ``target`` (the tolerance of Draft.rate_met)."""
    return not rate >= target * (1 - RATE_REL_TOL) - RATE_REL_TOL


def _resource_short(prep: Prepared) -> bool:
    """True only when no plan can meet every target because some resource runs out on every node the
    limits allow together — a proof in one pass over the pairs, no solver.

    A stage meeting its target uses at least ``target · min over its shapes of (need / per-slot rate)`` of
    each resource its slots need, and whole nodes hold at most their capacity (plus first-fit's float
    tolerance, see ``PACKING_OVERRUN``). It settles the common case of today's nodes falling far short of
    the demand; :func:`covering` goes on to the linear relaxation when it does not.
    """
    limits = node_limits(prep)
    supply: dict[str, float] = {}
    for si, capacity in enumerate(prep.capacity):
        for res, cap in capacity.items():
            supply[res] = supply.get(res, 0.0) + limits[si] * (cap + PACKING_OVERRUN * (1.0 + cap))
    need: dict[str, float] = {}
    for ki, k in enumerate(prep.stages):
        met_at = k.target_rate * (1 - RATE_REL_TOL) - RATE_REL_TOL
        own = prep.pairs_of_stage[ki]
        if not met_at > 0 or not own:
            continue
        for res, amount in prep.needs[ki].items():
            least = min(amount / prep.pairs[p].rate for p in own)
            need[res] = need.get(res, 0.0) + met_at * least
    return any(amount > supply.get(res, 0.0) * (1 + _CERTIFICATE_MARGIN) for res, amount in need.items())


@dataclass(frozen=True, slots=True)
class _CoverBox:
    """The relaxation every plan ``select_shapes`` can return lies in (see :func:`covering`)."""

    lower: np.ndarray
    upper: np.ndarray
    rows: Rows
    overrun: np.ndarray
    """Per row, how far a plan may overrun it (float tolerance in packing and in the budget check)."""
    objective: np.ndarray
    """The summed unmet fraction of the targets."""
    allowed: float
    """What that sum can be in a plan whose every target counts as met."""


def _cover_box(prep: Prepared, program: Program) -> _CoverBox | None:
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
    upper[: len(prep.shapes)] = node_limits(prep)
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
        slack = PACKING_OVERRUN * (budget + 1.0) / scale
        if program.budget_row is not None:
            overrun[program.budget_row] = slack
        else:
            prices = np.array([s.price_per_hour for s in prep.shapes], dtype=float) / scale
            rows = rows.plus(shapes_col, prices, -math.inf, budget / scale)
            overrun = np.append(overrun, slack)
    objective = np.zeros(program.n_vars)
    objective[program.off_u : program.off_m] = 1.0
    return _CoverBox(lower, upper, rows, overrun, objective, _allowed_unmet(prep, program))


def _allowed_unmet(prep: Prepared, program: Program) -> float:
    """The summed unmet fraction a plan can leave while every target counts as met (Draft.rate_met)."""
    return sum(RATE_REL_TOL * (1.0 + 1.0 / prep.stages[ki].target_rate) for ki in program.demand_stages)


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
    rows: Rows,
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


def covering(
    problem: SelectionProblem, structures: Structures, *, need_plan: bool
) -> Selection | bool | None:
    """``select_shapes(problem)`` when that plan meets every target (status ``optimal``), else None; with
    ``need_plan=False`` possibly just True instead of the plan.

    Before any plan is rounded, packed and repaired, a "no" is proved where possible: some resource runs
    out on every node the limits allow (:func:`_resource_short`, no solver); or the linear relaxation over
    every node the bounds, max_nodes and budget allow falls short, proved from its duals (weak duality over
    :func:`_cover_box`, whatever the solver's tolerances). A "yes" without a plan: when the rounded
    relaxation alone meets every target, so does the plan ``select_shapes`` picks (it never leaves more
    unmet than that one), and the integer program is not solved at all.
    """
    prep = prepare(problem)
    if prep.infeasible_bounds:
        return None
    if any(not prep.pairs_of_stage[ki] and _short(0.0, k.target_rate) for ki, k in enumerate(prep.stages)):
        return None
    if not prep.pairs:
        selection = choose(prep, structures)
        return selection if selection.status == "optimal" else None
    if _resource_short(prep):
        return None
    program = Program(prep, structures)
    relaxed = relax(program)
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
            alone = run_highs(box.objective, box.lower, box.upper, box.rows, None, presolve=False)
            if alone is not None and alone[1] is not None and _proves_short(box, alone[1]):
                return None
    rounded_draft: Draft | None = None
    if (rounded := solve_relaxed(program, relaxed)) is not None:
        rounded_draft = finish(prep, rounded, thorough=program.n_int <= EXACT_INTEGER_VARS)
        # choose picks the draft with the least rounded unmet measure; when this one's is 0, the pick's
        # is 0 too, so every target is met within rate_met's tolerance (status "optimal").
        if (
            not need_plan
            and round(rounded_draft.unmet_of(range(len(prep.stages)), rounded_draft.slots), 9) == 0
        ):
            return True
    selection = choose(prep, structures, program, (relaxed,), rounded_draft)
    return selection if selection.status == "optimal" else None
