"""The pipeline as the simulator runs it: per stage, the resources of a slot, its true rate on each shape and
how many fit a node; where Ray and Ray Data place slots (Ray Data's per-operator reservation, the shared rest
handed out in rounds, GPU stages first, cheapest shape per slot first); and what the placed slots process.
Resources are summed per shape with a whole-node cap per stage (``floor(node capacity / slot)`` slots per
node)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from autoscaler.sim.records import FloatArray
from autoscaler.sim.scenario import SimScenario
from autoscaler.types import NodeShape, frozen_map

__all__ = ["PipelineModel"]

_EPS = 1e-9
_INF = math.inf


class PipelineModel:
    """The chain's stages on the scenario's shapes; ``noise`` is each stage's speed per step."""

    def __init__(
        self, scenario: SimScenario, shapes: tuple[NodeShape, ...], chain: tuple[str, ...], noise: FloatArray
    ) -> None:
        cfg = scenario.config
        self.shapes = shapes
        self.chain = chain
        self.noise = noise
        self.dt = scenario.step_seconds
        S, K = len(shapes), len(chain)
        self.S, self.K = S, K
        world = {w.name: w for w in scenario.world.stages}

        resources = sorted(
            {r for s in self.shapes for r in s.resources} | {r for st in cfg.stages for r in st.resources}
        )
        self.resources = resources
        self.cap = [[s.capacity(r) for r in resources] for s in self.shapes]
        self.gpu_index = resources.index("GPU") if "GPU" in resources else None
        self.cpu_index = resources.index("CPU") if "CPU" in resources else None
        self.need: list[list[float]] = []
        self.need_map: list[Mapping[str, float]] = []
        self.rate: list[list[float]] = []
        self.per_node: list[list[int]] = []
        self.pref: list[list[int]] = []
        self.best_rate: list[float] = []
        self.eff: list[float] = []
        self.sel: list[float] = []
        self.max_slots: list[float] = []
        for name in self.chain:
            need_map = cfg.stage_resources(name)
            need = [float(need_map.get(r, 0.0)) for r in resources]
            w = world[name]
            rates, per_node = [], []
            for si, s in enumerate(self.shapes):
                fits = [math.floor(self.cap[si][j] / a + _EPS) for j, a in enumerate(need) if a > 0]
                pn = max(0, min(fits)) if fits else 0
                per_node.append(pn)
                rates.append(w.rate * w.skew.get(s.name, 1.0) if pn > 0 else 0.0)
            order = sorted(
                (si for si in range(S) if per_node[si] > 0),
                key=lambda si: (self.shapes[si].price_per_hour / per_node[si], self.shapes[si].name),
            )
            self.need.append(need)
            self.need_map.append(frozen_map(need_map))
            self.rate.append(rates)
            self.per_node.append(per_node)
            self.pref.append(order)
            self.best_rate.append(max(rates))
            self.eff.append(w.efficiency)
            self.sel.append(w.selectivity)
            profile = cfg.stage_profile(name)
            self.max_slots.append(float(profile.max_slots) if profile and profile.max_slots else _INF)
        gi = self.gpu_index
        self.is_gpu = [gi is not None and self.need[k][gi] > 0 for k in range(K)]
        self.gpu_stages = tuple(self.chain[k] for k in range(K) if self.is_gpu[k])
        # GPU-bound work: queued at a GPU stage or upstream of one (it will need a GPU later); GPU work
        # queued: at a GPU stage itself.
        last_gpu = max((k for k in range(K) if self.is_gpu[k]), default=-1)
        self.gpu_bound = [k <= last_gpu for k in range(K)]
        self.place_order = [k for k in range(K) if self.is_gpu[k]] + [
            k for k in range(K) if not self.is_gpu[k]
        ]
        # Ray Data's per-operator reservation budgets CPU and GPU (the resources it throttles on).
        self.ratio = scenario.world.op_reservation_ratio
        self.budgeted = [j for j in (self.cpu_index, self.gpu_index) if j is not None]
        self._reserved_for: tuple[int, ...] | None = None

    def place(
        self,
        k: int,
        units: float,
        i: int,
        free: list[list[float]],
        n_live: list[int],
        xk: list[int],
        prev: float,
        budget: list[float] | None = None,
    ) -> float:
        """Add slots of stage ``k`` to ``xk`` for ``units`` of work, cheapest shape first, on ``free``
        resources and, if given, within ``budget`` (cluster-wide CPU/GPU the stage may still take, reduced
        by what it takes); returns the units no slot could be found for."""
        # The scheduler cannot know this step's speed; last step's slot count is the best guess of the
        # scaling penalty, and the noise is the stage's own speed, which its tasks' runtimes reflect.
        scale = float(self.noise[k, i]) * math.pow(prev, self.eff[k] - 1.0)
        remaining = units
        total = sum(xk)
        limit = self.max_slots[k]
        nk = self.need[k]
        per_node = self.per_node[k]
        rate = self.rate[k]
        dt = self.dt
        for si in self.pref[k]:
            if remaining <= _EPS or total >= limit:
                break
            if n_live[si] == 0:
                continue
            step_units = rate[si] * scale * dt
            # One slot takes one queued unit at a time, so a slow slot still covers a whole unit.
            cover = max(1.0, step_units)
            want = min(math.ceil(remaining / cover - 1e-7), limit - total)
            fs = free[si]
            fit = per_node[si] * n_live[si] - xk[si]
            for j, a in enumerate(nk):
                if a > 0:
                    fit = min(fit, math.floor(fs[j] / a + _EPS))
            if budget is not None:
                for j in self.budgeted:
                    a = nk[j]
                    if a > 0:
                        fit = min(fit, math.floor(budget[j] / a + _EPS))
            xs = int(min(want, fit))
            if xs <= 0:
                continue
            for j, a in enumerate(nk):
                if a > 0:
                    fs[j] -= xs * a
            if budget is not None:
                for j in self.budgeted:
                    budget[j] = max(0.0, budget[j] - xs * nk[j])
            xk[si] += xs
            total += xs
            remaining -= xs * cover
        return max(0.0, remaining)

    def reservations(self, n_live: list[int]) -> tuple[list[list[float]], list[float]]:
        """Ray Data's reservation on the usable nodes: per stage, the CPU/GPU only it may use (indexed like
        ``self.resources``), and the shared rest. Fresh lists, cached per node count."""
        key = tuple(n_live)
        if key != self._reserved_for:
            R, K = len(self.resources), self.K
            total = [sum(n_live[si] * self.cap[si][j] for si in range(self.S)) for j in range(R)]
            left = total[:]
            own: list[list[float]] = []
            # Upstream stages first: a stage whose share no longer fits reserves nothing.
            for k in range(K):
                res = [0.0] * R
                for j in self.budgeted:
                    a = self.need[k][j]
                    if a > 0:  # nothing of a resource the stage does not use
                        share = max(self.ratio * total[j] / K, a)  # at least one slot (task or actor)
                        res[j] = min(share, self.max_slots[k] * a)  # at most max_slots
                if all(res[j] <= left[j] + _EPS for j in self.budgeted):
                    for j in self.budgeted:
                        left[j] = max(0.0, left[j] - res[j])
                else:
                    res = [0.0] * R
                own.append(res)
            shared = [left[j] if j in self.budgeted else 0.0 for j in range(R)]
            self._reserved_for = key
            self._reserved = (own, shared)
        own, shared = self._reserved
        return [r[:] for r in own], shared[:]

    def spend(
        self,
        k: int,
        units: float,
        i: int,
        free: list[list[float]],
        n_live: list[int],
        xk: list[int],
        prev: float,
        own: list[float],
        shared: list[float],
        grant: list[float],
    ) -> float:
        """``place`` within stage ``k``'s own reservation plus ``grant`` from the shared pool: takes from
        its reservation first, and takes what it used of the grant out of ``shared``."""
        budget = [own[j] + grant[j] for j in range(len(own))]
        left = self.place(k, units, i, free, n_live, xk, prev, budget)
        for j in self.budgeted:
            used = own[j] + grant[j] - budget[j]
            from_own = min(own[j], used)
            own[j] -= from_own
            shared[j] = max(0.0, shared[j] - (used - from_own))
        return left

    def share(
        self,
        rem: list[float],
        i: int,
        free: list[list[float]],
        n_live: list[int],
        x: list[list[int]],
        prev: list[float],
        own: list[list[float]],
        shared: list[float],
    ) -> None:
        """Hand out the shared pool to the stages with work left (``rem``) as Ray Data does: in rounds, each
        such stage gets an equal part of what is still free (what one cannot use is split again next round);
        then, downstream first, each takes what it can of the rest (Ray lets a stage whose part is less than
        one task borrow the rest of a slot, downstream stages first)."""
        for _ in range(self.K + 1):
            active = [k for k in self.place_order if rem[k] > _EPS and sum(x[k]) < self.max_slots[k]]
            if not active:
                return
            parts = [0.0] * len(shared)
            for j in self.budgeted:
                users = sum(1 for k in active if self.need[k][j] > 0)
                if users:
                    parts[j] = shared[j] / users
            placed = False
            for k in active:
                grant = [parts[j] if self.need[k][j] > 0 else 0.0 for j in range(len(parts))]
                before = sum(x[k])
                rem[k] = self.spend(k, rem[k], i, free, n_live, x[k], prev[k], own[k], shared, grant)
                placed = placed or sum(x[k]) > before
            if not placed:
                break
        for k in reversed(range(self.K)):
            if rem[k] > _EPS:
                rem[k] = self.spend(k, rem[k], i, free, n_live, x[k], prev[k], own[k], shared, shared[:])

    def capacity(self, k: int, i: int, xk: list[int]) -> float:
        """Units per second the placed slots of stage ``k`` process in step ``i``."""
        tot = 0
        cap = 0.0
        rk = self.rate[k]
        for si, n in enumerate(xk):
            if n:
                tot += n
                cap += n * rk[si]
        if tot == 0:
            return 0.0
        return cap * float(self.noise[k, i]) * math.pow(tot, self.eff[k] - 1.0)
