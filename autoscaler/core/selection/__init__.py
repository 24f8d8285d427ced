"""Shape selection: the cheapest mix of node shapes, and where each stage's slots go, for stage rates.

In order of priority: meet as much of every stage's target as possible, then cost as little per hour as
possible, then plan no slot the targets do not need. An integer program (``program``) solved by HiGHS
(``highs``), its answers repaired to pack onto whole nodes (``repair``), and early proofs for "would these
nodes do?" (``covering``). Pure: no I/O, no clock, no randomness; the same problem always yields the same
selection.
"""

from autoscaler.core.selection.planner import Planner, covers, select_covering, select_shapes
from autoscaler.core.selection.problem import Selection, SelectionProblem, StageRequirement

__all__ = [
    "Planner",
    "Selection",
    "SelectionProblem",
    "StageRequirement",
    "covers",
    "select_covering",
    "select_shapes",
]
