"""``backlog``: size every stage on its queue length, like KEDA's queue scalers.

Per stage, ``slots = ceil(backlog / target_backlog_per_slot)`` — and, while work is queued, never fewer than
the slots already busy. Each stage's slots go to the node shape where a slot is cheapest (price divided by
the slots one node holds), and the slots landing on a shape are bin-packed onto whole nodes by their
resources. It knows nothing about how fast a stage works, so it over- or under-provisions whenever a
stage's per-slot speed differs from what the target backlog per slot implies; it is the baseline for
"scale on queue length". A stage whose inputs are unknown keeps its current share of the cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from autoscaler.core.config import Config
from autoscaler.core.packing import first_fit_decreasing
from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.types import NodeShape, Snapshot, StageObservation

# A slot count that could never be placed anyway; keeps the arithmetic in machine integers for 1e12 backlogs.
_SLOT_CAP = 2**40


def _fits(shape: NodeShape, need: Mapping[str, float]) -> bool:
    return all(shape.capacity(r) >= a for r, a in need.items() if a > 0)


def _per_node(shape: NodeShape, need: Mapping[str, float]) -> int:
    """Slots that fit on one empty node (``_SLOT_CAP`` when the need is next to nothing)."""
    return min((_floor_capped(shape.capacity(r) / a) for r, a in need.items() if a > 0), default=_SLOT_CAP)


def _floor_capped(x: float) -> int:
    return _SLOT_CAP if not x < _SLOT_CAP else max(0, math.floor(x + 1e-9))


def _cheapest_shape(shapes: tuple[NodeShape, ...], need: Mapping[str, float]) -> NodeShape | None:
    """Cheapest per slot, then cheaper node, then name: a deterministic choice among launchable shapes."""
    fitting = [s for s in shapes if s.max_count > 0 and _fits(s, need)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (s.price_per_hour / _per_node(s, need), s.price_per_hour, s.name))


def _ceil_capped(x: float) -> int:
    return _SLOT_CAP if not x < _SLOT_CAP else max(0, math.ceil(x - 1e-9))


def _nodes_for(shape: NodeShape, items: list[tuple[str, Mapping[str, float], int]]) -> tuple[int, bool]:
    """Fewest nodes of ``shape`` that hold ``items`` (first-fit decreasing), capped at ``max_count``.

    Returns (nodes, fits): ``fits`` is False when even ``max_count`` nodes cannot hold them all.
    """
    items = [it for it in items if it[2] > 0]
    if not items:
        return 0, True
    lower = 1
    for res in sorted({r for _, need, _ in items for r, a in need.items() if a > 0}):
        total = sum(need.get(res, 0.0) * count for _, need, count in items)
        cap = shape.capacity(res)
        lower = max(lower, _ceil_capped(total / cap) if cap > 0 else _SLOT_CAP)
    if lower > shape.max_count:
        return shape.max_count, False
    # Each stage on nodes of its own always packs, so this bounds the search from above.
    separate = sum(-(-count // max(1, _per_node(shape, need))) for _, need, count in items)
    upper = min(separate, shape.max_count)
    if not first_fit_decreasing(shape.resources, upper, items).ok:
        return (separate, True) if separate <= shape.max_count else (shape.max_count, False)
    # More identical nodes never make first-fit place less, so the fewest that pack is a bisection away.
    while lower < upper:
        mid = (lower + upper) // 2
        if first_fit_decreasing(shape.resources, mid, items).ok:
            upper = mid
        else:
            lower = mid + 1
    return upper, True


class BacklogPolicy:
    name = "backlog"

    def __init__(self, *, target_backlog_per_slot: float = 4.0) -> None:
        if isinstance(target_backlog_per_slot, bool) or not isinstance(target_backlog_per_slot, int | float):
            raise TypeError(
                f"target_backlog_per_slot must be a number, got {type(target_backlog_per_slot).__name__}"
            )
        if not (math.isfinite(target_backlog_per_slot) and target_backlog_per_slot > 0):
            raise ValueError(
                f"target_backlog_per_slot must be a finite number > 0, got {target_backlog_per_slot}"
            )
        self._per_slot = float(target_backlog_per_slot)

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        snap = ctx.snapshot
        items: dict[str, list[tuple[str, Mapping[str, float], int]]] = {s.name: [] for s in snap.shapes}
        floors: dict[str, int] = {}
        reasons: list[str] = []
        for st in snap.stages:
            need = ctx.config.stage_resources(st.name)
            if not any(a > 0 for a in need.values()):
                reasons.append(f"{st.name}: its slot needs no resources; nothing to size")
                continue
            if not (st.backlog.known and st.slots_busy.known):
                reasons.append(self._hold(snap, st, need, items, floors))
                continue
            reasons.append(self._size(snap, ctx.config, st, need, items))

        targets: dict[str, int] = {}
        for shape in snap.shapes:
            n, fits = _nodes_for(shape, items[shape.name])
            floor = floors.get(shape.name, 0)
            if floor > n:
                n = floor
                reasons.append(f"{shape.name}: held at {floor}, a stage with unknown inputs may run there")
            if not fits:
                reasons.append(
                    f"{shape.name}: the slots wanted need more than its max_count {shape.max_count}"
                )
            targets[shape.name] = n
        return PolicyDecision(target_counts=targets, reasons=tuple(reasons))

    def _size(
        self,
        snap: Snapshot,
        config: Config,
        st: StageObservation,
        need: Mapping[str, float],
        items: dict[str, list[tuple[str, Mapping[str, float], int]]],
    ) -> str:
        backlog = max(0.0, st.backlog.get())
        busy = max(0.0, st.slots_busy.get())
        slots = _ceil_capped(backlog / self._per_slot)
        if backlog > 0:
            slots = max(slots, _ceil_capped(busy))
        profile = config.stage_profile(st.name)
        capped = ""
        if profile is not None and profile.max_slots is not None and slots > profile.max_slots:
            slots = profile.max_slots
            capped = f", capped by max_slots {profile.max_slots}"
        shape = _cheapest_shape(snap.shapes, need)
        if shape is None:
            return f"{st.name}: wants {slots} slot(s) but its slot ({dict(need)}) fits no launchable shape"
        # Never more slots on a shape than its max_count nodes can hold: the rest could not be placed anyway.
        room = _per_node(shape, need) * shape.max_count
        if slots > room:
            slots = room
            capped += f", capped at what {shape.max_count} (its max_count) {shape.name} nodes hold"
        if slots > 0:
            items[shape.name].append((st.name, need, slots))
        return (
            f"{st.name}: {slots} slot(s) on {shape.name} for backlog {backlog:.3g} "
            f"at {self._per_slot:g} per slot (busy {busy:.3g}){capped}"
        )

    @staticmethod
    def _hold(
        snap: Snapshot,
        st: StageObservation,
        need: Mapping[str, float],
        items: dict[str, list[tuple[str, Mapping[str, float], int]]],
        floors: dict[str, int],
    ) -> str:
        why = "; ".join(st.unknown_reasons())
        known_split = {
            name: v for name, v in st.slots_by_shape.items() if name in items and math.isfinite(v) and v > 0
        }
        if known_split:
            for name, v in sorted(known_split.items()):
                items[name].append((st.name, need, _ceil_capped(v)))
            where = ", ".join(f"{v:g} on {s}" for s, v in sorted(known_split.items()))
            return f"{st.name}: inputs unknown ({why}); keeping its current slots ({where})"
        # Where it runs is unknown too: every shape it could run on keeps what it has.
        current = snap.counts_including_pending()
        for shape in snap.shapes:
            if _fits(shape, need):
                floors[shape.name] = max(floors.get(shape.name, 0), current.get(shape.name, 0))
        return f"{st.name}: inputs unknown ({why}); holding every shape it can run on"
