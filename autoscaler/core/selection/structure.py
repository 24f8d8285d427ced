"""Which slots on one node shape cannot share a node: the conflicts the program's summed rows must respect.

A pure function of a node's capacity and the kinds of slot on it, and :class:`StructureMemo`, which keeps
its answers for a planner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from autoscaler.core.selection.prepared import FIT_TOL, NeedKey


@dataclass(frozen=True, slots=True)
class ShapeStructure:
    """Which of the slots on one shape cannot share a node with each other (by position on the shape)."""

    exclusive: tuple[bool, ...]
    """Per position: its slots cannot share a node with any other position's."""
    cliques: tuple[tuple[int, ...], ...]
    """Greedy maximal sets of positions that pairwise conflict (a node holds slots of at most one)."""


Structures = Callable[[Mapping[str, float], tuple[NeedKey, ...]], ShapeStructure]
"""What the program asks for a shape's structure through: :func:`compute_structure` or a memo of it."""


class StructureMemo:
    """:func:`compute_structure`'s answers, kept across the selections of one planner.

    Consecutive decisions (and the selections within one decision) ask for the same structures again and
    again. Bounded, cleared whole when full; tuples only, which the garbage collector does not need to
    walk. Its answers are those of a pure function keyed by all of its inputs, so no selection depends on
    what it holds.
    """

    __slots__ = ("_found", "_size")

    def __init__(self, size: int = 512) -> None:
        self._found: dict[tuple[NeedKey, tuple[NeedKey, ...]], ShapeStructure] = {}
        self._size = size

    def __call__(self, capacity: Mapping[str, float], kinds: tuple[NeedKey, ...]) -> ShapeStructure:
        key = (tuple(sorted(capacity.items())), kinds)
        found = self._found.get(key)
        if found is None:
            found = compute_structure(capacity, kinds)
            if len(self._found) >= self._size:
                self._found.clear()
            self._found[key] = found
        return found


def compute_structure(capacity: Mapping[str, float], kinds: tuple[NeedKey, ...]) -> ShapeStructure:
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
                a.get(r, 0.0) + b.get(r, 0.0) > capacity.get(r, 0.0) * (1 + FIT_TOL) + FIT_TOL
                for r in resources
            )
            for b in needs
        ]
        for a in needs
    ]
    n = len(kinds)
    if not any(any(row) for row in clash):
        # Nothing conflicts (the common case on large nodes): no cliques, nobody alone.
        return ShapeStructure((False,) * n, ())
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
    return ShapeStructure(exclusive, tuple(found))
