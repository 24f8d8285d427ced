"""The Selection a repaired draft makes: placements, unmet demand with its reason in plain words, status."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from autoscaler.core.selection.prepared import RATE_REL_TOL, Prepared, fits_one, usable_rate
from autoscaler.core.selection.problem import Selection, Status
from autoscaler.core.selection.repair import Draft
from autoscaler.types import Placement, UnmetDemand


def _needs_text(need: Mapping[str, float]) -> str:
    return ", ".join(f"{r}: {a:g}" for r, a in sorted(need.items())) or "nothing"


def _unmet_reason(draft: Draft, ki: int) -> str:
    prep = draft.prep
    k = prep.stages[ki]
    rated = {si for si, s in enumerate(prep.shapes) if k.per_slot_rate.get(s.name, 0.0) > 0}
    usable = {si for si in rated if usable_rate(k.per_slot_rate[prep.shapes[si].name], k.target_rate)}
    fitting = {si for si in range(len(prep.shapes)) if fits_one(prep.capacity[si], prep.needs[ki])}
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
    if k.max_slots is not None and draft.stage_slots(ki) >= k.max_slots:
        reasons.append(f"capped by max_slots {k.max_slots}")
    for (stage, si), missing in sorted(draft.dropped.items()):
        if stage == ki:
            reasons.append(f"{missing} slot(s) do not pack onto whole {prep.shapes[si].name} nodes")
    budget = prep.problem.budget_per_hour
    budget_blocks = nodes_blocks = False
    for si in eligible:
        if draft.counts[si] >= prep.hi[si]:
            reasons.append(f"capped by {prep.hi_label[si]}")
            continue
        if sum(draft.counts) + 1 > prep.problem.max_nodes:
            nodes_blocks = True
        if draft.cost() + prep.shapes[si].price_per_hour > budget * (1 + RATE_REL_TOL) + RATE_REL_TOL:
            budget_blocks = True
    if budget_blocks:
        reasons.append(f"capped by budget {budget:.2f} $/h")
    if nodes_blocks:
        reasons.append(f"capped by max_nodes {prep.problem.max_nodes}")
    if not reasons:
        # Every limit had room, yet the plan is short: only a search that stopped early explains it.
        reasons.append("the search stopped before finding more capacity within the limits")
    return "; ".join(dict.fromkeys(reasons))


def build_selection(prep: Prepared, draft: Draft, status_hint: str | None = None) -> Selection:
    prep_shapes = prep.shapes
    placements = sorted(
        (
            Placement(
                stage=prep.stages[pair.stage].name,
                shape=prep_shapes[pair.shape].name,
                slots=draft.slots[p],
                rate=draft.slots[p] * pair.rate,
            )
            for p, pair in enumerate(prep.pairs)
            if draft.slots[p] > 0
        ),
        key=lambda pl: (pl.stage, pl.shape),
    )
    unmet: list[UnmetDemand] = []
    for ki, k in enumerate(prep.stages):
        if draft.rate_met(ki):
            continue
        unmet.append(
            UnmetDemand(
                stage=k.name,
                target_rate=k.target_rate,
                planned_rate=draft.rate(ki),
                reason=status_hint or _unmet_reason(draft, ki),
            )
        )
    notes = list(prep.notes)
    for ki, k in enumerate(prep.stages):
        have = draft.stage_slots(ki)
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
        counts=MappingProxyType({s.name: draft.counts[si] for si, s in enumerate(prep_shapes)}),
        placements=tuple(placements),
        unmet=tuple(sorted(unmet, key=lambda u: u.stage)),
        cost_per_hour=draft.cost(),
        status=status,
        reasons=tuple(notes),
    )
