"""First-fit-decreasing packing of slots onto whole nodes.

The shape-selection program checks resources summed over all nodes of a shape, which can promise
capacity that is split across nodes in unusable pieces (two 6-CPU, two 3-CPU and one 2-CPU slot "fit"
two 10-CPU nodes by the sum, but whole nodes hold 6+3 and 6+3 and the 2 has nowhere to go). This module
is the check that a plan really packs. Pure and deterministic: the same input gives the same packing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

# Relative slack when comparing a request to what is left on a node, so that 0.1 + 0.2 CPU still fits
# into 0.3 CPU after float arithmetic.
_REL_TOL = 1e-9
_ABS_TOL = 1e-9

Item = tuple[str, Mapping[str, float], int]
"""(name, resources one copy needs, number of copies)."""

Need = tuple[tuple[str, float], ...]
"""What one copy needs, as (resource, amount) pairs with amount > 0."""

OrderedItem = tuple[str, Need, int]
"""(name, what one copy needs, number of copies): an item as :func:`first_fit` takes it."""


class NodeRun(NamedTuple):
    """``node_count`` consecutive nodes holding the same copies, with the same resources left."""

    placed: Mapping[str, int]
    """Item name → copies on each of these nodes."""
    left: Mapping[str, float]
    """What each of these nodes has left."""
    node_count: int


@dataclass(frozen=True, slots=True, eq=False)
class PackResult:
    """Where the copies of each item went, and which did not fit."""

    runs: tuple[NodeRun, ...]
    """The nodes in order, as runs of identical nodes; the counts add up to the node count. First-fit
    makes about two runs per item, however many nodes there are, so everything here is cheap."""
    unplaced: Mapping[str, int]
    """Item name → copies that fit on no node (only items with at least one such copy)."""
    capacity: Mapping[str, float]
    """What one empty node offers."""

    @property
    def nodes(self) -> tuple[Mapping[str, int], ...]:
        """Per node (in order), item name → copies placed there."""
        out: list[Mapping[str, int]] = []
        for run in self.runs:
            out.extend([run.placed] * run.node_count)
        return tuple(out)

    @property
    def residual(self) -> tuple[Mapping[str, float], ...]:
        """Per node, the resources left over after packing."""
        out: list[Mapping[str, float]] = []
        for run in self.runs:
            out.extend([run.left] * run.node_count)
        return tuple(out)

    @property
    def node_count(self) -> int:
        return sum(run.node_count for run in self.runs)

    @property
    def ok(self) -> bool:
        return not self.unplaced

    def placed(self, name: str) -> int:
        return sum(run.placed.get(name, 0) * run.node_count for run in self.runs)

    @property
    def used_nodes(self) -> int:
        """Nodes holding at least one item; first-fit fills a prefix, so the rest could be dropped."""
        used = 0
        total = 0
        for run in self.runs:
            total += run.node_count
            if run.placed:
                used = total
        return used

    def last_used(self) -> NodeRun | None:
        """The run holding the last used node (the least used one, as first-fit fills in order)."""
        for run in reversed(self.runs):
            if run.placed:
                return run
        return None

    def room_for(self, need: Mapping[str, float], limit: int) -> int:
        """Copies of ``need`` that would fit into the leftovers, at most ``limit`` (a first guess: adding
        them and packing again can reorder items, so check with another packing)."""
        total = 0
        for run in self.runs:
            if total >= limit:
                break
            per_node = _fits_count(run.left, need, limit - total)
            total += min(limit - total, per_node * run.node_count)
        return total

    def resized(self, node_count: int) -> PackResult | None:
        """The packing first-fit makes of the same items on ``node_count`` nodes, without packing again;
        None when that needs a new packing (more nodes while some copies were left unplaced).

        First-fit puts every copy on the first node with room, and what happens on the first ``n`` nodes
        never depends on the nodes after them: on fewer nodes, the copies that went past the last one are
        unplaced and everything else stays where it was; on more nodes, a complete packing only gains
        empty nodes.
        """
        have = self.node_count
        if node_count < 0:
            raise ValueError(f"node_count must be >= 0, got {node_count}")
        if node_count == have:
            return self
        if node_count > have:
            if self.unplaced:
                return None
            runs = list(self.runs)
            extra = node_count - have
            if runs and not runs[-1].placed:
                extra += runs.pop().node_count
            runs.append(NodeRun(_EMPTY_PLACED, MappingProxyType(dict(self.capacity)), extra))
            return PackResult(tuple(runs), self.unplaced, self.capacity)
        kept: list[NodeRun] = []
        unplaced = dict(self.unplaced)
        room = node_count
        for run in self.runs:
            keep = min(run.node_count, room)
            room -= keep
            if keep == run.node_count:
                kept.append(run)
                continue
            if keep > 0:
                kept.append(NodeRun(run.placed, run.left, keep))
            lost = run.node_count - keep
            for name, copies in run.placed.items():
                unplaced[name] = unplaced.get(name, 0) + copies * lost
        return PackResult(tuple(kept), MappingProxyType(unplaced), self.capacity)

    def without_unplaced(self) -> PackResult:
        """The packing first-fit makes once the copies it could not place are taken away: every other
        copy meets the same nodes in the same state, so it lands where it did."""
        if not self.unplaced:
            return self
        return PackResult(self.runs, _EMPTY_PLACED, self.capacity)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackResult):
            return NotImplemented
        return (
            [dict(n) for n in self.nodes] == [dict(n) for n in other.nodes]
            and [dict(r) for r in self.residual] == [dict(r) for r in other.residual]
            and dict(self.unplaced) == dict(other.unplaced)
        )


_EMPTY_PLACED: Mapping[str, int] = MappingProxyType({})


def _fits_count(left: Mapping[str, float], need: Mapping[str, float], cap: int) -> int:
    """How many copies of ``need`` fit into ``left`` (at most ``cap``)."""
    count = cap
    for res, amount in need.items():
        if amount <= 0:
            continue
        avail = left.get(res, 0.0)
        fit = (avail + _ABS_TOL + _REL_TOL * abs(avail)) / amount
        # Compared before converting, so that a tiny amount (fit = inf) cannot overflow int().
        if fit < count:
            if fit < 1:
                return 0
            count = int(fit)
    return count


def size_key(name: str, need: Mapping[str, float], capacity: Mapping[str, float]) -> tuple[float, float, str]:
    """First-fit-decreasing's order: larger items first, by dominant share of the node, then by total share,
    then by name (a stable order)."""
    shares = []
    for res, amount in need.items():
        if amount <= 0:
            continue
        cap = capacity.get(res, 0.0)
        shares.append(math.inf if cap <= 0 else amount / cap)
    if not shares:
        return (0.0, 0.0, name)
    return (-max(shares), -sum(shares), name)


def first_fit_decreasing(
    node_capacity: Mapping[str, float],
    node_count: int,
    items: Sequence[Item],
) -> PackResult:
    """Pack copies of items onto ``node_count`` identical nodes, biggest items first, each into the first
    node with room.

    Copies of one item are identical, so they are placed in bulk: a node that cannot take one more copy
    never can later (its free resources only shrink), which makes the bulk step exactly first-fit.
    Items needing no resources still need a node to run on.
    """
    if node_count < 0:
        raise ValueError(f"node_count must be >= 0, got {node_count}")
    merged: dict[str, tuple[Mapping[str, float], int]] = {}
    for name, need, count in items:
        if count < 0:
            raise ValueError(f"item {name!r}: count must be >= 0, got {count}")
        for res, amount in need.items():
            if not math.isfinite(amount) or amount < 0:
                raise ValueError(f"item {name!r}: {res} must be a finite amount >= 0, got {amount}")
        if name in merged:
            prev_need, prev_count = merged[name]
            if dict(prev_need) != dict(need):
                raise ValueError(f"item {name!r} appears twice with different resources")
            merged[name] = (prev_need, prev_count + count)
        else:
            merged[name] = (need, count)
    order = sorted(merged, key=lambda n: size_key(n, merged[n][0], node_capacity))
    return first_fit(
        node_capacity,
        node_count,
        [(n, tuple((r, a) for r, a in merged[n][0].items() if a > 0), merged[n][1]) for n in order],
    )


def first_fit(
    node_capacity: Mapping[str, float], node_count: int, items: Sequence[OrderedItem]
) -> PackResult:
    """First-fit of the items in the order given (:func:`first_fit_decreasing` sorts and checks them first;
    callers of this one pass item names once each, finite amounts > 0 and counts >= 0)."""
    # Nodes are kept as runs of identical nodes (same leftovers, same contents), in node order: first-fit
    # over runs is exactly first-fit over nodes, and the number of runs grows with the number of item
    # kinds, not with the node count, so a thousand-node shape packs as fast as a three-node one.
    # A run is [left, placed, count]; every dict belongs to one run only, so runs change in place.
    runs: list[list[Any]] = [[dict(node_capacity), {}, node_count]] if node_count else []
    unplaced: dict[str, int] = {}
    abs_tol, rel_tol = _ABS_TOL, _REL_TOL
    # Items that need the same come one after another (same size), and a node that had no room for one
    # copy never has room later (what is left only shrinks): each such item starts its scan at the first
    # run the previous one found room in, which keeps large packings linear instead of quadratic.
    kind: Need | None = None
    start = 0
    for name, need, remaining in items:
        if not remaining:
            continue
        if need != kind:
            kind, start = need, 0
        i = start
        first_room = -1
        while remaining and i < len(runs):
            run = runs[i]
            left: dict[str, float] = run[0]
            # The hot loop of every packing: how many copies fit one node of this run, kept inline.
            per_node = remaining
            for res, amount in need:
                avail = left.get(res, 0.0)
                fit = (avail + abs_tol + rel_tol * abs(avail)) / amount
                # Compared before converting, so that a tiny amount (fit = inf) cannot overflow int().
                if fit < per_node:
                    if fit < 1:
                        per_node = 0
                        break
                    per_node = int(fit)
            if per_node == 0:
                i += 1
                continue
            if first_room < 0:
                first_room = i
            count: int = run[2]
            full_nodes = min(count, remaining // per_node)
            if full_nodes == 0:
                # Fewer copies left than one node takes: they all go on this run's first node.
                full_nodes, per_node = 1, remaining
            placed: dict[str, int] = run[1]
            if full_nodes < count:
                # The rest of the run keeps the old contents; the nodes taking copies get their own.
                runs.insert(i + 1, [left, placed, count - full_nodes])
                left = dict(left)
                placed = dict(placed)
                run[0], run[1], run[2] = left, placed, full_nodes
            for res, amount in need:
                left[res] = left.get(res, 0.0) - per_node * amount
            placed[name] = placed.get(name, 0) + per_node
            remaining -= per_node * full_nodes
            i += 1
        start = first_room if first_room >= 0 else len(runs)
        if remaining:
            unplaced[name] = remaining
    return PackResult(
        runs=tuple(NodeRun(MappingProxyType(p), MappingProxyType(left), c) for left, p, c in runs),
        unplaced=MappingProxyType(unplaced),
        capacity=MappingProxyType(dict(node_capacity)),
    )
