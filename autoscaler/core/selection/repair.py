"""Repair of an integer answer into a plan that packs onto whole nodes: the :class:`Draft` and its steps.

Drop slots the targets do not need; pack every shape's slots first-fit-decreasing and give each shape the
nodes its slots really need (summed resources do not guarantee whole-node packing), dropping what cannot
get a node and making up for it elsewhere; close gaps with room on chosen nodes or new ones; remove nodes
nothing needs; close half-empty nodes whose work fits more cheaply elsewhere. Deterministic throughout.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence

from autoscaler.core.packing import Need, PackResult, first_fit, size_key
from autoscaler.core.selection.prepared import RATE_REL_TOL, SLOT_LIMIT, Prepared, floor_ratio, slots_needed
from autoscaler.core.selection.program import Solution

# Moves tried to close half-empty nodes (see Draft.consolidate); a fixed count, so that the answer never
# depends on machine speed, above what the search usually needs before it stops by itself.
_CONSOLIDATE_ATTEMPTS = 16


def _getter(indices: Sequence[int]) -> Callable[[Sequence[int]], tuple[int, ...]]:
    """A fast ``lambda xs: tuple(xs[i] for i in indices)``."""
    if not indices:
        return lambda _xs: ()
    if len(indices) == 1:
        only = indices[0]
        return lambda xs: (xs[only],)
    getter = operator.itemgetter(*indices)
    return lambda xs: getter(xs)


class Draft:
    """Node counts per shape and slots per pair, being checked against whole-node packing and repaired
    (mutable); the Selection is built from the best draft."""

    def __init__(self, prep: Prepared, sol: Solution, *, thorough: bool) -> None:
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
        return self.rate(ki) >= target * (1 - RATE_REL_TOL) - RATE_REL_TOL

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
            room = min(room, floor_ratio(budget * (1 + RATE_REL_TOL) + RATE_REL_TOL - self.cost(), price))
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
            floor = k.target_rate * (1 - RATE_REL_TOL) - RATE_REL_TOL
            for p in own:
                rate = prep.pairs[p].rate
                spare = min(self.slots[p], count - k.min_slots, floor_ratio(total - floor, rate))
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
                or self.cost() > budget * (1 + RATE_REL_TOL) + RATE_REL_TOL
            ):
                self.counts[si] -= 1

    def _want(self, ki: int, p: int) -> int:
        """Slots of pair ``p`` that would close stage ``ki``'s gap (rate and min_slots), within max_slots."""
        k = self.prep.stages[ki]
        short = k.target_rate - self.rate(ki)
        want = slots_needed(short, self.prep.pairs[p].rate) if short > 0 else 0
        want = max(want, k.min_slots - self.stage_slots(ki))
        if k.max_slots is not None:
            want = min(want, max(0, k.max_slots - self.stage_slots(ki)))
        return want

    def _room(self, si: int, ki: int) -> int:
        """Slots of stage ``ki`` that would fit into the leftovers of shape ``si``'s current packing (a first
        guess, see PackResult.room_for)."""
        packed = self.pack(si)
        # Packings live as long as the draft (in _packs), so their ids are stable keys; stages whose slots
        # need the same resources share the answer.
        key = (id(packed), self.prep.need_keys[ki])
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = packed.room_for(self.prep.needs[ki], SLOT_LIMIT)
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


def finish(prep: Prepared, sol: Solution, *, thorough: bool) -> Draft:
    """``sol`` repaired by every step in turn; ``thorough`` searches more candidates when slots must be
    dropped (affordable on small problems)."""
    draft = Draft(prep, sol, thorough=thorough)
    draft.trim_slots()
    draft.settle_nodes()
    draft.fill()
    draft.shrink_nodes()
    draft.consolidate(_CONSOLIDATE_ATTEMPTS)
    return draft
