"""A selection from a prepared problem: the exact program where it is small, the rounded relaxation always,
each repaired; the draft leaving the least demand unmet, then costing least, wins.
"""

from __future__ import annotations

import numpy as np

from autoscaler.core.selection.explain import build_selection
from autoscaler.core.selection.prepared import Prepared
from autoscaler.core.selection.problem import Selection
from autoscaler.core.selection.program import (
    EXACT_INTEGER_VARS,
    Program,
    Solution,
    relax,
    solve_exact,
    solve_relaxed,
)
from autoscaler.core.selection.repair import Draft, finish
from autoscaler.core.selection.structure import Structures


def choose(
    prep: Prepared,
    structures: Structures,
    program: Program | None = None,
    relaxed: tuple[tuple[np.ndarray, np.ndarray | None] | None] | None = None,
    rounded_draft: Draft | None = None,
) -> Selection:
    """The selection for a prepared problem; ``program``, ``relaxed`` (``(relax(program),)``) and the
    finished rounding of ``relaxed`` when the caller has them already."""
    if not prep.pairs:
        # Nothing can be placed anywhere: the cheapest plan is the lower bounds, no solver needed.
        return build_selection(prep, Draft(prep, Solution(counts=list(prep.lo), slots=[]), thorough=False))
    if program is None:
        program = Program(prep, structures)
    if relaxed is None:
        relaxed = (relax(program),)
    drafts: list[Draft] = []
    small = program.n_int <= EXACT_INTEGER_VARS
    if small and (exact := solve_exact(program)) is not None:
        drafts.append(finish(prep, exact, thorough=True))
    # Always also the rounded relaxation: it is cheap, and where packing forces the exact program's
    # answer to grow, the packing-aware rounding sometimes does better.
    if rounded_draft is not None:
        drafts.append(rounded_draft)
    elif (rounded := solve_relaxed(program, relaxed[0])) is not None:
        drafts.append(finish(prep, rounded, thorough=small))
    if not drafts:
        draft = Draft(prep, Solution(counts=list(prep.lo), slots=[0] * len(prep.pairs)), thorough=False)
        return build_selection(prep, draft, status_hint="the solver found no plan")
    every_stage = range(len(prep.stages))
    best = min(
        range(len(drafts)),
        key=lambda i: (
            round(drafts[i].unmet_of(every_stage, drafts[i].slots), 9),
            round(drafts[i].cost(), 9),
            i,
        ),
    )
    return build_selection(prep, drafts[best])
