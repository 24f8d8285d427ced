"""The integer program of a selection problem, and its two ways to an integer answer.

Exactly (HiGHS branch-and-bound, lexicographic: unmet demand first, then cost) for small programs, and by
rounding the LP relaxation for any size; the repair steps make either answer whole-node feasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.core.selection.highs import Rows, run_highs
from autoscaler.core.selection.prepared import SLOT_LIMIT, Prepared
from autoscaler.core.selection.structure import Structures

# Up to this many integer variables the program is also solved exactly (about 6 stages × 5 shapes): beyond
# that HiGHS's root work grows far past a decision's budget, and only the rounded relaxation is used.
EXACT_INTEGER_VARS = 32
# The unmet term is worth this many times the largest reachable cost.
_UNMET_WEIGHT_FACTOR = 10.0
# Total weight of the idle-slot/free-node penalty, in units of the cheapest node.
_EPSILON_TOTAL = 1e-3
# A summed resource row stands in for a pair's slots-per-node row when it is at most this much looser.
_IMPLIED_TOL = 1e-12
# How far (relative) a packed plan may overrun a summed row or the budget: first-fit and the budget check
# allow 1e-9, this leaves a wide margin.
PACKING_OVERRUN = 1e-8


@dataclass(slots=True)
class Solution:
    """An integer answer before repair: nodes per shape, slots per pair."""

    counts: list[int]
    slots: list[int]
    """Per pair."""


class Program:
    """The matrices of one problem; solved up to three times for an exact lexicographic answer.

    With ``s`` a shape, ``k`` a stage and ``j`` a resource::

        n_s     integer in [lo_s, hi_s]           nodes of shape s
        x_ks    integer in [0, xub_ks]            slots of stage k on shape s (only where k runs on s)
        u_k     continuous in [0, 1]              unmet fraction of stage k's target
        m_k     continuous in [0, min_slots_k]    missing slots below min_slots (soft: never infeasible)

        Σ_s rate_ks/target_k · x_ks + u_k ≥ 1                 demand, normalised so every row is O(1)
        Σ_k req_kj/cap_sj · x_ks − n_s ≤ 0                    resources of shape s, normalised by capacity
        x_ks − floor(cap_s / req_k) · n_s ≤ 0                 slots per whole node
        Σ_{k∈Q} x_ks / floor(cap_s / req_k) − n_s ≤ 0        Q: stages that cannot share a node pairwise
        min_slots_k ≤ Σ_s x_ks + m_k ;  Σ_s x_ks ≤ max_slots_k
        Σ_s n_s ≤ max_nodes ;  Σ_s price_s · n_s ≤ budget

        minimise  W · (Σ_k u_k + Σ_k m_k / min_slots_k)  +  Σ_s price_s / p_ref · n_s  +  ε · (Σ x + Σ n)

    Costs are in units of the cheapest positive price ``p_ref``; ``W`` is ten times the largest reachable
    cost (meeting demand first); ``ε`` keeps idle slots and free nodes out. A slots-per-node row is left out
    where a summed row of its shape implies it. ``structures`` answers which slots cannot share a node.
    """

    def __init__(self, prep: Prepared, structures: Structures) -> None:
        self.prep = prep
        shapes, stages, pairs = prep.shapes, prep.stages, prep.pairs
        n_shapes, n_pairs = len(shapes), len(pairs)
        self.demand_stages = [ki for ki, k in enumerate(stages) if k.target_rate > 0]
        self.min_stages = [ki for ki, k in enumerate(stages) if k.min_slots > 0]
        off_x = self.off_x = n_shapes
        self.off_u = self.off_x + n_pairs
        self.off_m = self.off_u + len(self.demand_stages)
        n_vars = self.off_m + len(self.min_stages)
        self.n_vars = n_vars
        self.n_int = n_shapes + n_pairs

        lb = np.zeros(n_vars)
        ub = np.zeros(n_vars)
        lb[:n_shapes] = prep.lo
        ub[:n_shapes] = prep.hi_solve
        ub[self.off_x : self.off_u] = [pair.xub for pair in pairs]
        ub[self.off_u : self.off_m] = 1.0
        ub[self.off_m :] = [stages[ki].min_slots for ki in self.min_stages]
        self.lower, self.upper = lb, ub
        self.integrality = np.zeros(n_vars)
        self.integrality[: self.n_int] = 1

        prices = np.array([s.price_per_hour for s in shapes], dtype=float)
        positive = prices[prices > 0]
        p_ref = float(positive.min()) if positive.size else 1.0
        cost = prices / p_ref
        max_cost = float(cost @ np.asarray(prep.hi_solve, dtype=float))
        budget = prep.problem.budget_per_hour
        if math.isfinite(budget) and not prep.infeasible_bounds:
            max_cost = min(max_cost, budget / p_ref)
        n_int_total = max(1, n_shapes + int(sum(pair.xub for pair in pairs)))
        eps = _EPSILON_TOTAL / n_int_total
        self.unmet_weight = _UNMET_WEIGHT_FACTOR * (max_cost + 1.0)

        # The unmet measure: u_k counts fully, m_k per missing slot as a fraction of min_slots.
        unmet_vec = np.zeros(n_vars)
        unmet_vec[self.off_u : self.off_m] = 1.0
        for i, ki in enumerate(self.min_stages):
            unmet_vec[self.off_m + i] = 1.0 / stages[ki].min_slots
        self.unmet_vec = unmet_vec
        c = np.full(n_vars, eps)
        c[:n_shapes] += cost
        c[self.off_u :] = self.unmet_weight * unmet_vec[self.off_u :]
        self.weighted = c

        # Rows a packed plan may overrun by float tolerance (see covering): row → (shape, overrun per
        # node); the budget row's index; whether the max_nodes row is there.
        self.tolerant_rows: dict[int, tuple[int, float]] = {}
        self.budget_row: int | None = None
        self.has_max_nodes_row = False
        start: list[int] = [0]
        index: list[int] = []
        value: list[float] = []
        row_lb: list[float] = []
        row_ub: list[float] = []
        inf = math.inf

        def add_row(cols: list[int], vals: list[float], low: float, high: float, *, ordered: bool) -> None:
            # Columns in order, as a compressed sparse matrix has them (a row never names a column twice).
            # Parallel lists rather than (column, value) pairs: a large program has a couple of thousand
            # entries, and a tuple each cost as much again in the garbage collector's young generation.
            if not ordered:
                order = sorted(range(len(cols)), key=cols.__getitem__)
                cols = [cols[i] for i in order]
                vals = [vals[i] for i in order]
            index.extend(cols)
            value.extend(vals)
            start.append(len(index))
            row_lb.append(low)
            row_ub.append(high)

        # Pair indices of a stage or a shape are increasing, and the x columns come after the node columns
        # and before u and m: most rows are built in column order.
        for i, ki in enumerate(self.demand_stages):
            target = stages[ki].target_rate
            own = prep.pairs_of_stage[ki]
            cols = [off_x + p for p in own]
            cols.append(self.off_u + i)
            vals = [pairs[p].rate / target for p in own]
            vals.append(1.0)
            add_row(cols, vals, 1.0, inf, ordered=True)
        for i, ki in enumerate(self.min_stages):
            own = prep.pairs_of_stage[ki]
            cols = [off_x + p for p in own]
            cols.append(self.off_m + i)
            add_row(cols, [1.0] * len(cols), float(stages[ki].min_slots), inf, ordered=True)
        for ki, k in enumerate(stages):
            own = prep.pairs_of_stage[ki]
            if k.max_slots is not None and sum(pairs[p].xub for p in own) > k.max_slots:
                add_row([off_x + p for p in own], [1.0] * len(own), -inf, float(k.max_slots), ordered=True)
        for si in range(n_shapes):
            on_shape = prep.pairs_of_shape[si]
            summed: list[tuple[list[int], list[float], float, bool]] = []
            # Pairs whose own row below (slots per whole node) a summed row already implies.
            implied: set[int] = set()
            # With one stage on a shape the per-node rows are exact; the summed rows matter only when
            # stages share a shape.
            if len(on_shape) >= 2:
                structure = structures(
                    prep.capacity[si], tuple(prep.need_keys[pairs[p].stage] for p in on_shape)
                )
                # Slots that cannot share a node with each other (3-CPU and 2-CPU slots on 4-CPU nodes)
                # each take nodes of their own; the summed rows would let them share and leave packing to
                # find the missing nodes later. A set of mutually conflicting stages therefore needs,
                # together, at least Σ x / (slots per node) nodes.
                for clique in structure.cliques:
                    members = [on_shape[j] for j in clique]
                    cols = [si, *(off_x + p for p in members)]
                    vals = [-1.0, *(1.0 / pairs[p].per_node for p in members)]
                    summed.append((cols, vals, 0.0, True))
                    implied.update(members)
                # A slot that cannot share a node with any other stage here (e.g. 4 CPUs on a 4-CPU GPU
                # node) blocks its nodes for everybody: count those nodes in every resource row as well.
                exclusive = [p for p, alone in zip(on_shape, structure.exclusive, strict=True) if alone]
                shared = [p for p, alone in zip(on_shape, structure.exclusive, strict=True) if not alone]
                base_cols = [off_x + p for p in exclusive]
                base_vals = [1.0 / pairs[p].per_node for p in exclusive]
                resources = sorted({r for p in shared for r in prep.needs[pairs[p].stage]})
                for res in resources:
                    users = [p for p in shared if res in prep.needs[pairs[p].stage]]
                    if len(users) + len(exclusive) < 2:
                        continue
                    cap = prep.capacity[si][res]
                    cols = [si, *base_cols]
                    vals = [-1.0, *base_vals]
                    for p in users:
                        share = prep.needs[pairs[p].stage][res] / cap
                        cols.append(off_x + p)
                        vals.append(share)
                        # x_p · share <= n implies x_p <= per_node · n when share · per_node >= 1 (up to
                        # float noise far below the solver's tolerance).
                        if share * pairs[p].per_node >= 1.0 - _IMPLIED_TOL:
                            implied.add(p)
                    # First-fit lets a node's last copy overrun by up to 1e-9 · (1 + cap): in this row's
                    # units, with a wide margin, this much per node.
                    # Exclusive and shared pairs interleave: only a row with both needs sorting.
                    ordered = not exclusive
                    summed.append((cols, vals, PACKING_OVERRUN * (1.0 + cap) / cap, ordered))
                    implied.update(exclusive)
            # Slots per whole node: x_ks <= floor(cap_s / req_k) · n_s, unless a summed row implies it.
            # In a typical large program most of them are implied, and dropping them takes the row count
            # from many hundreds to about a hundred, which is what the simplex time scales with.
            for p in on_shape:
                if p not in implied:
                    add_row([si, off_x + p], [-float(pairs[p].per_node), 1.0], -inf, 0.0, ordered=True)
            for cols, vals, overrun, ordered in summed:
                if overrun > 0:
                    self.tolerant_rows[len(row_lb)] = (si, overrun)
                add_row(cols, vals, -inf, 0.0, ordered=ordered)
        if not prep.infeasible_bounds:
            if sum(prep.hi_solve) > prep.problem.max_nodes:
                self.has_max_nodes_row = True
                add_row(
                    list(range(n_shapes)), [1.0] * n_shapes, -inf, float(prep.problem.max_nodes), ordered=True
                )
            if math.isfinite(budget) and float(prices @ np.asarray(prep.hi_solve, dtype=float)) > budget:
                scale = budget if budget > 0 else 1.0
                self.budget_row = len(row_lb)
                priced = [si for si in range(n_shapes) if prices[si] > 0]
                add_row(priced, [prices[si] / scale for si in priced], -inf, budget / scale, ordered=True)
        self.rows = Rows(
            start=np.asarray(start, dtype=np.int32),
            index=np.asarray(index, dtype=np.int32),
            value=np.asarray(value, dtype=float),
            lower=np.asarray(row_lb, dtype=float),
            upper=np.asarray(row_ub, dtype=float),
        )

    def solve(
        self, objective: np.ndarray, unmet_cap: float | None = None, relax: bool = False
    ) -> np.ndarray | None:
        rows = self.rows
        if unmet_cap is not None:
            cols = np.arange(self.off_u, self.n_vars, dtype=np.int32)
            rows = rows.plus(cols, self.unmet_vec[self.off_u :], -math.inf, unmet_cap)
        # Without presolve: on these programs it costs more than it saves, for the relaxation and for the
        # integer program (same answers either way).
        answer = run_highs(
            objective, self.lower, self.upper, rows, None if relax else self.integrality, presolve=False
        )
        return None if answer is None else answer[0]

    def unmet_of(self, x: np.ndarray) -> float:
        return float(self.unmet_vec @ x)

    def to_solution(self, x: np.ndarray) -> Solution:
        ints = np.rint(x[: self.n_int]).astype(int)
        n_shapes = len(self.prep.shapes)
        return Solution(counts=[int(v) for v in ints[:n_shapes]], slots=[int(v) for v in ints[n_shapes:]])


def _unmet_floor(prep: Prepared) -> float:
    """A lower bound on the unmet measure: each stage alone, with its best slots up to max_slots and as
    many as its shapes' bounds hold. When the weighted answer reaches it, it is lexicographically optimal
    and the checking solves can be skipped (the common case: unmet because of max_slots or max_count)."""
    floor = 0.0
    for ki, k in enumerate(prep.stages):
        own = sorted(prep.pairs_of_stage[ki], key=lambda p: -prep.pairs[p].rate)
        room = SLOT_LIMIT if k.max_slots is None else k.max_slots
        rate = 0.0
        slots = 0
        for p in own:
            take = min(prep.pairs[p].xub, room - slots)
            rate += take * prep.pairs[p].rate
            slots += take
        if k.target_rate > 0:
            floor += max(0.0, 1.0 - rate / k.target_rate)
        if k.min_slots > 0:
            floor += max(0, k.min_slots - sum(prep.pairs[p].xub for p in own)) / k.min_slots
    return floor


def solve_exact(program: Program) -> Solution | None:
    """The integer program itself, in lexicographic order (unmet first, then cost)."""
    x = program.solve(program.weighted)
    if x is None:
        return None
    unmet = program.unmet_of(x)
    tol = 1e-6 * (1.0 + unmet)
    if unmet > _unmet_floor(program.prep) + tol:
        # The weights favour meeting demand but cannot guarantee it for tiny shortfalls: check exactly.
        best = program.solve(program.unmet_vec)
        if best is not None:
            least = program.unmet_of(best)
            if least < unmet - tol:
                pinned = program.solve(program.weighted, unmet_cap=least + 1e-6 * (1.0 + least))
                x = pinned if pinned is not None else best
    return program.to_solution(x)


def relax(program: Program) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The LP relaxation of the weighted program: its solution and row duals (see ``Program.solve``)."""
    return run_highs(program.weighted, program.lower, program.upper, program.rows, None, presolve=False)


def solve_relaxed(program: Program, relaxed: tuple[np.ndarray, np.ndarray | None] | None) -> Solution | None:
    """The LP relaxation (``relaxed``, from :func:`relax`), rounded; the plan steps afterwards make it
    whole-node feasible."""
    if relaxed is None:
        return None
    x = relaxed[0]
    # Slots round up (the trim step takes back what the targets do not need). Node counts round down,
    # which keeps them within max_nodes and the budget; packing then adds the nodes the slots need
    # wherever those limits leave room.
    n_shapes = len(program.prep.shapes)
    slots = np.ceil(x[n_shapes : program.n_int] - 1e-6).astype(int)
    nodes = np.floor(x[:n_shapes] + 1e-6).astype(int)
    counts = [
        max(lo, min(int(v), hi)) for v, lo, hi in zip(nodes, program.prep.lo, program.prep.hi, strict=True)
    ]
    return Solution(counts=counts, slots=[max(0, int(v)) for v in slots])
