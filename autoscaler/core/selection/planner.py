"""The planner: the three questions a decision asks of shape selection, answered by one object.

:class:`Planner` owns what it works out about node shapes between calls; the module functions are the
answers of one planner shared by the process (see :data:`_SHARED`).
"""

from __future__ import annotations

from autoscaler.core.selection.choose import choose
from autoscaler.core.selection.covering import covering
from autoscaler.core.selection.prepared import prepare
from autoscaler.core.selection.problem import Selection, SelectionProblem
from autoscaler.core.selection.structure import StructureMemo


class Planner:
    """Cheapest node-shape mixes for stage rates. Every planner gives the same answers; one kept across
    decisions gives them sooner, as it keeps which slots cannot share a node on each shape (a memo of a
    pure function, see :class:`StructureMemo`)."""

    __slots__ = ("_structures",)

    def __init__(self) -> None:
        self._structures = StructureMemo()

    def select_shapes(self, problem: SelectionProblem) -> Selection:
        """The cheapest node counts and slot placements that meet as much of every stage's target as the
        bounds, max_nodes and budget allow. Unmet demand is returned as data, never raised."""
        return choose(prepare(problem), self._structures)

    def select_covering(self, problem: SelectionProblem) -> Selection | None:
        """``select_shapes(problem)`` when that plan meets every target (status ``optimal``), else None.

        The same answer as selecting and checking the status, found much sooner when it is None: a "no" is
        proved from the resources or the LP relaxation before any plan is rounded, packed and repaired.
        When the targets can be met it costs what ``select_shapes`` costs, and returns the same selection.
        Meant for a decision's "would today's nodes do?" checks (``upper`` = today's counts).
        """
        answer = covering(problem, self._structures, need_plan=True)
        return answer if isinstance(answer, Selection) else None

    def covers(self, problem: SelectionProblem) -> bool:
        """Whether ``select_shapes(problem)`` meets every target (status ``optimal``); see
        :meth:`select_covering`. A "yes" needs no plan, and often not the integer program either."""
        answer = covering(problem, self._structures, need_plan=False)
        return answer if isinstance(answer, bool) else answer is not None


# The planner behind the module functions, which is how decisions call the planner today: they hold no
# planner of their own yet. Sharing it (across decisions, simulations, threads) is safe because what it
# keeps never changes an answer; a caller holding its own Planner (one per daemon or simulation) needs
# none of this.
_SHARED = Planner()


def select_shapes(problem: SelectionProblem) -> Selection:
    """:meth:`Planner.select_shapes`, by the shared planner."""
    return _SHARED.select_shapes(problem)


def select_covering(problem: SelectionProblem) -> Selection | None:
    """:meth:`Planner.select_covering`, by the shared planner."""
    return _SHARED.select_covering(problem)


def covers(problem: SelectionProblem) -> bool:
    """:meth:`Planner.covers`, by the shared planner."""
    return _SHARED.covers(problem)
