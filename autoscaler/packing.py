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
from itertools import groupby
from types import MappingProxyType

# Relative slack when comparing a request to what is left on a node, so that 0.1 + 0.2 CPU still fits
# into 0.3 CPU after float arithmetic.
_REL_TOL = 1e-9
_ABS_TOL = 1e-9

Item = tuple[str, Mapping[str, float], int]
"""(name, resources one copy needs, number of copies)."""


@dataclass(frozen=True, slots=True)
class PackResult:
    """Where the copies of each item went, and which did not fit."""

    nodes: tuple[Mapping[str, int], ...]
    """Per node (in order), item name → copies placed there."""
    residual: tuple[Mapping[str, float], ...]
    """Per node, the resources left over after packing."""
    unplaced: Mapping[str, int]
    """Item name → copies that fit on no node (only items with at least one such copy)."""

    @property
    def ok(self) -> bool:
        return not self.unplaced

    def placed(self, name: str) -> int:
        return sum(n.get(name, 0) for n in self.nodes)

    @property
    def used_nodes(self) -> int:
        """Nodes holding at least one item; first-fit fills a prefix, so the rest could be dropped."""
        for i in range(len(self.nodes) - 1, -1, -1):
            if self.nodes[i]:
                return i + 1
        return 0

    def room_for(self, need: Mapping[str, float], limit: int) -> int:
        """Copies of ``need`` that would fit into the leftovers, at most ``limit`` (a first guess: adding
        them and packing again can reorder items, so check with another packing)."""
        total = 0
        # Runs of identical nodes share one leftovers object: count each run once.
        for _, run_iter in groupby(self.residual, key=id):
            if total >= limit:
                break
            run = list(run_iter)
            per_node = _fits_count(run[0], need, limit - total)
            total += min(limit - total, per_node * len(run))
        return total


def _fits_count(left: Mapping[str, float], need: Mapping[str, float], cap: int) -> int:
    """How many copies of ``need`` fit into ``left`` (at most ``cap``)."""
    # The hot loop of every packing: kept free of function calls on purpose.
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


def _size_key(
    name: str, need: Mapping[str, float], capacity: Mapping[str, float]
) -> tuple[float, float, str]:
    """Larger items first: by dominant share of the node, then by total share, then by name (stable order)."""
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

    # Nodes are kept as runs of identical nodes (same leftovers, same contents), in node order: first-fit
    # over runs is exactly first-fit over nodes, and the number of runs grows with the number of item
    # kinds, not with the node count, so a thousand-node shape packs as fast as a three-node one.
    runs: list[_Run] = [_Run(dict(node_capacity), {}, node_count)] if node_count else []
    unplaced: dict[str, int] = {}
    order = sorted(merged, key=lambda n: _size_key(n, merged[n][0], node_capacity))
    for name in order:
        need, remaining = merged[name]
        i = 0
        while remaining and i < len(runs):
            run = runs[i]
            per_node = _fits_count(run.left, need, remaining)
            if per_node == 0:
                i += 1
                continue
            full_nodes = min(run.count, remaining // per_node)
            if full_nodes == 0:
                # Fewer copies left than one node takes: they all go on this run's first node.
                full_nodes, per_node = 1, remaining
            rest = run.count - full_nodes
            runs[i] = run.took(name, need, per_node, full_nodes)
            remaining -= per_node * full_nodes
            if rest:
                runs.insert(i + 1, _Run(run.left, run.placed, rest))
            i += 1
        if remaining:
            unplaced[name] = remaining
    nodes: list[Mapping[str, int]] = []
    residual: list[Mapping[str, float]] = []
    for run in runs:
        placed = MappingProxyType(dict(run.placed))
        left = MappingProxyType(dict(run.left))
        nodes.extend([placed] * run.count)
        residual.extend([left] * run.count)
    return PackResult(nodes=tuple(nodes), residual=tuple(residual), unplaced=MappingProxyType(unplaced))


@dataclass(frozen=True, slots=True)
class _Run:
    """``count`` consecutive nodes with the same leftovers and contents."""

    left: dict[str, float]
    placed: dict[str, int]
    count: int

    def took(self, name: str, need: Mapping[str, float], copies: int, nodes: int) -> _Run:
        left = dict(self.left)
        for res, amount in need.items():
            if amount > 0:
                left[res] = left.get(res, 0.0) - copies * amount
        placed = dict(self.placed)
        placed[name] = placed.get(name, 0) + copies
        return _Run(left, placed, nodes)
