"""The simulation: a fluid model of a Ray cluster running one pipeline chain, stepped in fixed time steps.

Model, per step of ``dt`` seconds (step ``i`` covers ``[i·dt, (i+1)·dt)``):

1. Events due at the start of the step: launched nodes whose delay has elapsed become usable, drained
   nodes go away, warm-pool replacements become ready.
2. Placement (Ray's scheduler plus Ray Data's task submission, simplified): every stage asks for as many
   slots as it has work for — enough to clear its queue plus its input within the step, and never more
   than one slot per queued unit or ``max_slots`` — and gets what fits on the usable nodes and in its
   Ray Data budget. The budget is Ray Data's per-operator reservation (``ReservationOpResourceAllocator``,
   ``world.op_reservation_ratio``, default 0.5 as in Ray Data): of the CPUs and GPUs on usable nodes each
   stage reserves ``ratio / stages`` of every resource it uses (at least one slot, at most ``max_slots``;
   upstream first, and a stage whose share no longer fits reserves nothing), which no other stage may
   use, even while idle. The shared rest goes to the stages that still have work in rounds of equal parts
   (what one cannot use is split again), then downstream first. So an upstream stage with a queue can no
   longer take every free CPU and starve a downstream one. First each stage is sized on last step's
   input, GPU stages first (Ray keeps CPU-only work off GPU nodes while it can); then, as each stage's
   actual input arrives, it gets more slots from its reservation and whatever of the shared pool and the
   nodes is still free. With ``op_reservation_ratio: 0`` there are no budgets (Ray Data's
   ``op_resource_reservation_enabled = False``): stages take what fits, GPU stages first, then in chain
   order. Within a stage the shapes are tried cheapest per slot first.
   Resources are summed per shape with a whole-node cap per stage (``floor(node capacity / slot)`` slots
   per node), exact for the slot sizes of these pipelines and an approximation for mixed slot sizes on
   one shape. Work that finds no room is what Ray's autoscaler sees as pending demand (capped, per stage,
   at ``pending_demand_factor`` × its running slots, as Ray Data grows a stage at most 2× per request).
3. Processing in chain order: stage k's slots process ``Σ_s slots·rate_ks · n^(b-1) · noise`` units per
   second, at most what is queued plus what arrived; its output (× selectivity) arrives at stage k+1 in the
   same step. Work is continuous (fractions of a block), so work is conserved exactly.
4. Nodes are packed in launch order: the first nodes of a shape that the placed slots need are busy, the
   rest are idle (their idle time grows), which is what makes idle-timeout scale-down possible.

Every ``decision_interval`` a ``Snapshot`` is built the way the daemon builds one: throughput and arrival
rate over the configured Prometheus ``rate_window`` (arrivals exactly, where Prometheus would use
``deriv`` of the queue), backlog and busy slots as instantaneous gauges (the busy slots averaged over the
last step), busy slots attributed to shapes in proportion to capacity as ``observe.attribute_slots`` does
(or exactly, if the scenario says ``attribution: exact``), node utilization and idle times as the GCS
reports them. Then ``autoscaler.core.decide.decide`` is called — the same function the daemon runs. The plan's
targets are applied: launches get a launch delay drawn per shape (the k-th launch of a shape gets the same
delay under every policy); removals take idle nodes first (longest idle first), then cancel pending
launches (newest first), then drain the least-loaded busy nodes.

Warm pool: with ``warm_pool.enabled`` in the scenario's configuration, after every decision that was not
held the pool is sized by :func:`autoscaler.core.warm_pool.pool_targets` — the function the daemon runs — from
the plan history (lead time: the configured ``launch_seconds``; the sim does not feed observed launches
back) and topped up (standby nodes are launched and billed like any node) or trimmed (standby nodes
without a node yet first). A scale-up takes ready standby nodes first (usable at once) and launches
the rest cold; each claimed node is replaced in the background. Not modelled: claims for waiting work
*between* decisions (the daemon's claim loop), so a claim waits for the next decision here. The
``ray-default`` policy never gets a pool: it stands for Ray as users run it today, which has none.

Billing runs from the launch request to removal (a cloud bills a booting instance); capacity only from the
moment the launch delay has elapsed. Everything random comes from the scenario seed, so a run is a pure
function of (scenario, policy).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.observe import attribute_slots
from autoscaler.core.policy_api import Policy
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import PoolMemory, pool_targets
from autoscaler.sim.scenario import Scenario, lognormal_noise
from autoscaler.types import Node, NodeShape, Reading, Snapshot, StageObservation, frozen_map

_NO_POOL_POLICIES = frozenset({"ray-default"})
"""Policies that stand for Ray without raytide: no warm pool for them, whatever the configuration says."""

__all__ = ["DecideFn", "DecisionRecord", "NodeLog", "SimRun", "Simulation", "simulate"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DecideFn = Callable[[Snapshot, Config, ThroughputModels, Policy, DecisionState], Decision]
"""The signature of ``autoscaler.core.decide.decide`` (injectable, e.g. to time it)."""

_EPS = 1e-9
_INF = math.inf
_NOT_GPU = Reading.unknown("node has no GPU")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What one decision saw and asked for."""

    time: float
    current: Mapping[str, int]
    """Running plus pending nodes per shape (what ``decide`` compared against)."""
    target: Mapping[str, int]
    """The plan's targets after guardrails (equal to ``current`` when the policy failed)."""
    proposed: Mapping[str, int]
    """What the policy and planner asked for before guardrails (``target`` when unknown)."""
    held: bool
    demand: Mapping[str, float]
    """Stage → target rate, for policies that return demand."""
    error: str | None = None
    """Set when the policy raised: the cluster was held as it was."""


@dataclass(frozen=True, slots=True)
class NodeLog:
    """Every node the run requested, one entry per node (index = node id)."""

    shape: IntArray
    requested: FloatArray
    """When the launch was requested (billing starts)."""
    ready: FloatArray
    """When the node became usable (launch delay elapsed); inf if it never did."""
    removed: FloatArray
    """When it was removed or its launch cancelled (billing stops); inf if still there at the end."""
    drain_start: FloatArray
    """When it stopped taking work before removal; inf if it was never drained."""
    joined: FloatArray
    """When it joined the cluster: its request time, or for a warm-pool node the time it was taken from the
    pool; inf if it stayed in the pool."""
    last_busy: FloatArray
    """The end of the last step in which it ran work (its ready time if it never did)."""

    def __len__(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, slots=True)
class SimRun:
    """The raw outcome of one (scenario, policy) run; ``autoscaler.sim.results`` summarises it."""

    scenario: Scenario
    policy: str
    dt: float
    stages: tuple[str, ...]
    """Chain order."""
    gpu_stages: tuple[str, ...]
    shapes: tuple[NodeShape, ...]
    arrived: FloatArray
    """(stages, steps): units that arrived at each stage during each step."""
    processed: FloatArray
    """(stages, steps): units each stage finished during each step."""
    queued: FloatArray
    """(stages, steps): units waiting at the end of each step."""
    live: IntArray
    """(steps, shapes): usable cluster nodes during each step (launched, not draining, not removed)."""
    billed: IntArray
    """(steps, shapes): nodes being paid for during each step (pending, live, draining and warm-pool)."""
    slo_miss: BoolArray
    """(steps,): some stage's queue exceeded what it drains in ``drain_seconds`` at its throughput."""
    gpu_busy: FloatArray
    """(steps,): GPUs busy (time-averaged over the step)."""
    gpu_live: FloatArray
    """(steps,): GPUs on usable nodes."""
    gpu_queued: BoolArray
    """(steps,): work was queued at a GPU stage (work a GPU could take now)."""
    gpu_bound_queued: BoolArray
    """(steps,): work was queued at a GPU stage or upstream of one (it will need a GPU later)."""
    nodes: NodeLog
    decisions: tuple[DecisionRecord, ...]
    wall_seconds: float

    @property
    def steps(self) -> int:
        return int(self.arrived.shape[1])

    @property
    def times(self) -> FloatArray:
        """Start time of each step."""
        return np.arange(self.steps, dtype=np.float64) * self.dt

    @property
    def duration(self) -> float:
        return self.steps * self.dt

    def total_cost(self) -> float:
        """Dollars: every node's billed seconds × its shape's price."""
        prices = np.array([s.price_per_hour for s in self.shapes])
        end = np.minimum(self.nodes.removed, self.duration)
        seconds = np.maximum(0.0, end - self.nodes.requested)
        return float(np.sum(seconds * prices[self.nodes.shape]) / 3600.0)


class _NodeTable:
    """Growable structure-of-arrays for nodes; ids are row indices."""

    def __init__(self, capacity: int = 256) -> None:
        self.n = 0
        self.shape = np.zeros(capacity, dtype=np.int64)
        self.requested = np.zeros(capacity)
        self.ready = np.full(capacity, _INF)
        self.removed = np.full(capacity, _INF)
        self.drain_start = np.full(capacity, _INF)
        self.joined = np.full(capacity, _INF)
        self.last_busy = np.zeros(capacity)

    def add(self, shape: int, requested: float, ready: float, *, in_pool: bool) -> int:
        if self.n == len(self.shape):
            grow = len(self.shape)
            self.shape = np.concatenate([self.shape, np.zeros(grow, dtype=np.int64)])
            self.requested = np.concatenate([self.requested, np.zeros(grow)])
            self.ready = np.concatenate([self.ready, np.full(grow, _INF)])
            self.removed = np.concatenate([self.removed, np.full(grow, _INF)])
            self.drain_start = np.concatenate([self.drain_start, np.full(grow, _INF)])
            self.joined = np.concatenate([self.joined, np.full(grow, _INF)])
            self.last_busy = np.concatenate([self.last_busy, np.zeros(grow)])
        i = self.n
        self.n += 1
        self.shape[i] = shape
        self.requested[i] = requested
        self.ready[i] = ready
        self.joined[i] = _INF if in_pool else requested
        # A node that was never busy has been idle since it became usable.
        self.last_busy[i] = ready
        return i

    def log(self) -> NodeLog:
        n = self.n
        return NodeLog(
            shape=self.shape[:n].copy(),
            requested=self.requested[:n].copy(),
            ready=self.ready[:n].copy(),
            removed=self.removed[:n].copy(),
            drain_start=self.drain_start[:n].copy(),
            joined=self.joined[:n].copy(),
            last_busy=self.last_busy[:n].copy(),
        )


@dataclass(slots=True)
class _ShapeState:
    live: list[int] = field(default_factory=list)
    """Usable cluster nodes in the order they became usable (the scheduler packs the first ones)."""
    live_arr: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dirty: bool = False
    pending: set[int] = field(default_factory=set)
    """Cluster nodes launched and not yet usable."""
    pool: list[int] = field(default_factory=list)
    """Warm-pool nodes ready to be taken."""
    pool_pending: set[int] = field(default_factory=set)
    draining: set[int] = field(default_factory=set)

    def live_ids(self) -> IntArray:
        if self.dirty:
            self.live_arr = np.array(self.live, dtype=np.int64)
            self.dirty = False
        return self.live_arr


def _rate_window_seconds(config: Config) -> float:
    return config.prometheus.rate_window_seconds


class Simulation:
    """One run of one policy on one scenario. ``run()`` may be called once."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        *,
        models: ThroughputModels | None = None,
        progress: Callable[[float, float], None] | None = None,
        decide_fn: DecideFn = decide,
    ) -> None:
        self.scenario = scenario
        self.decide_fn = decide_fn
        self.policy = policy
        self.models = models if models is not None else ThroughputModels()
        self.progress = progress
        self.config = scenario.config
        cfg = scenario.config
        self.dt = scenario.step_seconds
        self.n_steps = scenario.steps
        self.shapes = cfg.node_shapes()
        self.shape_names = tuple(s.name for s in self.shapes)
        self.chain = scenario.chain()
        S, K = len(self.shapes), len(self.chain)
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
        self._reserved: tuple[list[list[float]], list[float]] = ([], [])

        seeds = np.random.SeedSequence(scenario.seed).spawn(3 + K + S)
        rng_trace = np.random.default_rng(seeds[0])
        self.trace_rate = scenario.trace.rates(self.n_steps, self.dt, scenario.start_clock, rng_trace)
        self.noise = np.ones((K, self.n_steps))
        for k, name in enumerate(self.chain):
            w = world[name]
            rng = np.random.default_rng(seeds[3 + k])
            self.noise[k] = lognormal_noise(rng, self.n_steps, self.dt, w.noise_sigma, w.noise_seconds)
        self.launch_rng = [np.random.default_rng(seeds[3 + K + si]) for si in range(S)]
        self.launch_mean = [scenario.launch_mean(n) for n in self.shape_names]
        self.launch_jitter = [scenario.world_shape(n).launch_jitter for n in self.shape_names]
        self.standby = [scenario.world_shape(n).standby for n in self.shape_names]
        self.pool_on = cfg.warm_pool.enabled and policy.name not in _NO_POOL_POLICIES
        self.pool_memory = PoolMemory()
        self.drain_seconds = scenario.world.drain_seconds
        self.window_steps = max(1, round(_rate_window_seconds(cfg) / self.dt))

        self.table = _NodeTable()
        self.ss = [_ShapeState() for _ in range(S)]
        self.ready_heap: list[tuple[float, int]] = []
        self.drain_heap: list[tuple[float, int]] = []
        self.used = False

    # ------------------------------------------------------------------ nodes

    def _launch_delay(self, si: int) -> float:
        mean, jitter = self.launch_mean[si], self.launch_jitter[si]
        u = float(self.launch_rng[si].uniform(-1.0, 1.0))
        return max(0.0, mean + jitter * u)

    def _request(self, si: int, t: float, *, in_pool: bool) -> None:
        ready = t + self._launch_delay(si)
        nid = self.table.add(si, t, ready, in_pool=in_pool)
        (self.ss[si].pool_pending if in_pool else self.ss[si].pending).add(nid)
        heapq.heappush(self.ready_heap, (ready, nid))

    def _launch(self, si: int, count: int, t: float) -> None:
        st = self.ss[si]
        for _ in range(count):
            if st.pool:
                nid = st.pool.pop(0)
                self.table.joined[nid] = t
                # Held by a placement group in the pool, it was not idle; its idle time starts now.
                self.table.last_busy[nid] = t
                self._make_live(si, nid)
                self._request(si, t, in_pool=True)
            else:
                self._request(si, t, in_pool=False)

    def _size_pool(self, target: Mapping[str, int], t: float) -> None:
        """Top the warm pool up to, or trim it down to, what the daemon's sizing asks for."""
        cfg = self.config
        self.pool_memory.remember_plan(t, target, cfg.warm_pool.history_seconds)
        want = pool_targets(cfg, self.pool_memory, target).counts
        tab = self.table
        for si, name in enumerate(self.shape_names):
            st = self.ss[si]
            have = len(st.pool) + len(st.pool_pending)
            goal = int(want.get(name, 0))
            for _ in range(goal - have):
                self._request(si, t, in_pool=True)
            extra = have - goal
            for nid in sorted(st.pool_pending, reverse=True)[: max(0, extra)]:
                tab.removed[nid] = t
                st.pool_pending.discard(nid)
                extra -= 1
            while extra > 0 and st.pool:
                tab.removed[st.pool.pop()] = t
                extra -= 1

    def _make_live(self, si: int, nid: int) -> None:
        st = self.ss[si]
        st.live.append(nid)
        st.dirty = True

    def _events(self, t: float) -> None:
        tab = self.table
        while self.ready_heap and self.ready_heap[0][0] <= t + _EPS:
            _, nid = heapq.heappop(self.ready_heap)
            if tab.removed[nid] < _INF:
                continue  # cancelled while launching
            si = int(tab.shape[nid])
            st = self.ss[si]
            if nid in st.pool_pending:
                st.pool_pending.discard(nid)
                st.pool.append(nid)
            else:
                st.pending.discard(nid)
                self._make_live(si, nid)
        while self.drain_heap and self.drain_heap[0][0] <= t + _EPS:
            _, nid = heapq.heappop(self.drain_heap)
            tab.removed[nid] = t
            self.ss[int(tab.shape[nid])].draining.discard(nid)

    def _next_event(self) -> float:
        a = self.ready_heap[0][0] if self.ready_heap else _INF
        b = self.drain_heap[0][0] if self.drain_heap else _INF
        return min(a, b)

    def _remove(self, si: int, count: int, t: float) -> None:
        st = self.ss[si]
        tab = self.table
        live = st.live
        idle = [nid for nid in live if tab.last_busy[nid] < t - _EPS]
        idle.sort(key=lambda nid: (tab.last_busy[nid], -nid))
        for nid in idle[:count]:
            tab.removed[nid] = t
            live.remove(nid)
            count -= 1
        st.dirty = True
        if count > 0 and st.pending:
            for nid in sorted(st.pending, reverse=True)[:count]:
                tab.removed[nid] = t
                st.pending.discard(nid)
                count -= 1
        # Least loaded = last in packing order: the scheduler fills the earliest nodes first.
        while count > 0 and live:
            nid = live.pop()
            tab.drain_start[nid] = t
            end = t + math.ceil(self.drain_seconds / self.dt - _EPS) * self.dt
            if end <= t:
                tab.removed[nid] = t
            else:
                st.draining.add(nid)
                heapq.heappush(self.drain_heap, (end, nid))
            count -= 1

    # ------------------------------------------------------------------ scheduling

    def _place(
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

    def _reservations(self, n_live: list[int]) -> tuple[list[list[float]], list[float]]:
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

    def _spend(
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
        """``_place`` within stage ``k``'s own reservation plus ``grant`` from the shared pool: takes from
        its reservation first, and takes what it used of the grant out of ``shared``."""
        budget = [own[j] + grant[j] for j in range(len(own))]
        left = self._place(k, units, i, free, n_live, xk, prev, budget)
        for j in self.budgeted:
            used = own[j] + grant[j] - budget[j]
            from_own = min(own[j], used)
            own[j] -= from_own
            shared[j] = max(0.0, shared[j] - (used - from_own))
        return left

    def _share(
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
                rem[k] = self._spend(k, rem[k], i, free, n_live, x[k], prev[k], own[k], shared, grant)
                placed = placed or sum(x[k]) > before
            if not placed:
                break
        for k in reversed(range(self.K)):
            if rem[k] > _EPS:
                rem[k] = self._spend(k, rem[k], i, free, n_live, x[k], prev[k], own[k], shared, shared[:])

    def _capacity(self, k: int, i: int, xk: list[int]) -> float:
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

    # ------------------------------------------------------------------ run

    def run(self) -> SimRun:
        if self.used:
            raise RuntimeError("a Simulation runs once; make a new one")
        self.used = True
        wall0 = time.perf_counter()
        sc = self.scenario
        S, K, dt, n = self.S, self.K, self.dt, self.n_steps
        tab = self.table
        for si, name in enumerate(self.shape_names):
            for _ in range(sc.world_shape(name).initial):
                self._make_live(si, tab.add(si, 0.0, 0.0, in_pool=False))
            for _ in range(self.standby[si]):
                self.ss[si].pool.append(tab.add(si, 0.0, 0.0, in_pool=True))

        arrived = np.zeros((K, n))
        processed = np.zeros((K, n))
        queued = np.zeros((K, n))
        live_rec = np.zeros((n, S), dtype=np.int64)
        billed_rec = np.zeros((n, S), dtype=np.int64)
        slo_miss = np.zeros(n, dtype=np.bool_)
        gpu_busy_rec = np.zeros(n)
        gpu_live_rec = np.zeros(n)
        gpu_queued = np.zeros(n, dtype=np.bool_)
        gpu_bound_queued = np.zeros(n, dtype=np.bool_)
        cum_a = np.zeros((K, n + 1))
        cum_d = np.zeros((K, n + 1))
        # Busy slot-seconds per (stage, shape), for snapshots that average busy slots over the window.
        window_mean = sc.world.busy_slots == "window_mean"
        cum_busy = np.zeros((n + 1, K, S)) if window_mean else None
        busy_acc = [[0.0] * S for _ in range(K)]

        drain_target = sc.config.targets.drain_seconds
        q_threshold = sc.world.queued_threshold
        cap, need = self.cap, self.need
        R = len(self.resources)
        gi = self.gpu_index
        trace_units = self.trace_rate * dt
        noise = self.noise
        q = [0.0] * K
        inflow_prev = [0.0] * K
        x_prev_total = [1.0] * K
        ca = [0.0] * K
        cd = [0.0] * K
        # Per-step results the snapshot reads.
        busy_slots = [[0.0] * S for _ in range(K)]
        unplaced = [0] * K
        placed_total = [0] * K
        billed_now = [0] * S
        spd = sc.steps_per_decision
        reserve = self.ratio > 0
        own: list[list[float]] = []
        shared: list[float] = []
        state = DecisionState()
        decisions: list[DecisionRecord] = []
        next_event = self._next_event()
        billed_dirty = True

        for i in range(n):
            t = i * dt
            if t + _EPS >= next_event:
                self._events(t)
                next_event = self._next_event()
                billed_dirty = True
            if billed_dirty:
                for si in range(S):
                    st = self.ss[si]
                    billed_now[si] = len(st.live) + len(st.pending) + len(st.draining) + len(st.pool)
                    billed_now[si] += len(st.pool_pending)
                billed_dirty = False
            n_live = [len(self.ss[si].live) for si in range(S)]
            free = [[n_live[si] * cap[si][j] for j in range(R)] for si in range(S)]

            # -- placement: GPU stages first, each for its queue plus the input it had last step
            first_in = float(trace_units[i])
            x = [[0] * S for _ in range(K)]
            if reserve:
                # Ray Data's reservation: each stage within its own reserved share first, then the
                # shared rest split among the stages that still have work.
                own, shared = self._reservations(n_live)
                rem = [0.0] * K
                for k in self.place_order:
                    est = q[k] + (first_in if k == 0 else inflow_prev[k])
                    if est > _EPS:
                        rem[k] = self._place(k, est, i, free, n_live, x[k], x_prev_total[k], own[k])
                self._share(rem, i, free, n_live, x, x_prev_total, own, shared)
            else:
                for k in self.place_order:
                    est = q[k] + (first_in if k == 0 else inflow_prev[k])
                    if est > _EPS:
                        self._place(k, est, i, free, n_live, x[k], x_prev_total[k])

            # -- processing, in chain order
            inflow = first_in
            miss = False
            gq = False
            gbq = False
            gpu_busy = 0.0
            for k in range(K):
                xk = x[k]
                avail = q[k] + inflow
                cap_rate = self._capacity(k, i, xk)
                unplaced[k] = 0
                if avail > cap_rate * dt * (1.0 + 1e-9) + _EPS:
                    # More arrived than last step's input suggested: Ray schedules more tasks as blocks
                    # arrive, on whatever is still free (within its reservation and the shared pool).
                    more = avail - cap_rate * dt
                    if reserve:
                        left_over = self._spend(
                            k, more, i, free, n_live, xk, x_prev_total[k], own[k], shared, shared[:]
                        )
                    else:
                        left_over = self._place(k, more, i, free, n_live, xk, x_prev_total[k])
                    cap_rate = self._capacity(k, i, xk)
                    if left_over > _EPS:
                        per_slot = max(1.0, self.best_rate[k] * noise[k, i] * dt)
                        room = self.max_slots[k] - sum(xk)
                        unplaced[k] = int(max(0.0, min(math.ceil(left_over / per_slot - 1e-7), room)))
                tot = sum(xk)
                placed_total[k] = tot
                if tot > 0:
                    x_prev_total[k] = float(tot)
                done = min(avail, cap_rate * dt)
                left = avail - done
                if left < 1e-12:
                    left = 0.0
                util = done / (cap_rate * dt) if cap_rate > 0 else 0.0
                bk = busy_slots[k]
                acc = busy_acc[k]
                for si in range(S):
                    bk[si] = xk[si] * util
                    acc[si] += bk[si] * dt
                if self.is_gpu[k] and gi is not None:
                    gpu_busy += sum(bk[si] for si in range(S)) * need[k][gi]
                arrived[k, i] = inflow
                processed[k, i] = done
                queued[k, i] = left
                ca[k] += inflow
                cd[k] += done
                cum_a[k, i + 1] = ca[k]
                cum_d[k, i + 1] = cd[k]
                if left > _EPS and left > drain_target * done / dt:
                    miss = True
                if self.gpu_bound[k] and left > q_threshold:
                    gbq = True
                    if self.is_gpu[k]:
                        gq = True
                inflow_prev[k] = inflow
                q[k] = left
                inflow = done * self.sel[k]

            slo_miss[i] = miss
            if cum_busy is not None:
                cum_busy[i + 1] = busy_acc
            gpu_queued[i] = gq
            gpu_bound_queued[i] = gbq
            gpu_busy_rec[i] = gpu_busy
            if gi is not None:
                gpu_live_rec[i] = sum(n_live[si] * cap[si][gi] for si in range(S))
            live_rec[i] = n_live
            billed_rec[i] = billed_now

            # -- which nodes were busy: the placed slots packed onto the first nodes of each shape
            t_end = t + dt
            for si in range(S):
                if not n_live[si]:
                    continue
                b = 0
                cs = cap[si]
                fs = free[si]
                for j in range(R):
                    if cs[j] > 0:
                        used = n_live[si] * cs[j] - fs[j]
                        if used > _EPS:
                            b = max(b, math.ceil(used / cs[j] - 1e-7))
                if b:
                    ids = self.ss[si].live_ids()
                    tab.last_busy[ids[: min(b, n_live[si])]] = t_end

            # -- decision
            if (i + 1) % spd == 0 and i + 1 < n:
                observed = busy_slots
                if cum_busy is not None:
                    lo = max(0, i + 1 - self.window_steps)
                    observed = ((cum_busy[i + 1] - cum_busy[lo]) / ((i + 1 - lo) * dt)).tolist()
                snap = self._snapshot(t_end, i, q, observed, busy_slots, unplaced, placed_total, cum_a, cum_d)
                rec, state = self._decide(snap, state)
                decisions.append(rec)
                self._apply(rec.target, snap, t_end)
                if self.pool_on and not rec.held:
                    self._size_pool(rec.target, t_end)
                next_event = self._next_event()
                billed_dirty = True
                if self.progress is not None:
                    self.progress(t_end, n * dt)
        if self.progress is not None:
            self.progress(n * dt, n * dt)
        return SimRun(
            scenario=sc,
            policy=self.policy.name,
            dt=dt,
            stages=self.chain,
            gpu_stages=self.gpu_stages,
            shapes=self.shapes,
            arrived=arrived,
            processed=processed,
            queued=queued,
            live=live_rec,
            billed=billed_rec,
            slo_miss=slo_miss,
            gpu_busy=gpu_busy_rec,
            gpu_live=gpu_live_rec,
            gpu_queued=gpu_queued,
            gpu_bound_queued=gpu_bound_queued,
            nodes=tab.log(),
            decisions=tuple(decisions),
            wall_seconds=time.perf_counter() - wall0,
        )

    # ------------------------------------------------------------------ observe / decide / act

    def _snapshot(
        self,
        now: float,
        i: int,
        q: list[float],
        observed_slots: list[list[float]],
        busy_slots: list[list[float]],
        unplaced: list[int],
        placed_total: list[int],
        cum_a: FloatArray,
        cum_d: FloatArray,
    ) -> Snapshot:
        S, dt = self.S, self.dt
        lo = max(0, i + 1 - self.window_steps)
        span = (i + 1 - lo) * dt
        counts = {self.shape_names[si]: len(self.ss[si].live) for si in range(S)}
        stages = []
        demand: list[Mapping[str, float]] = []
        factor = self.scenario.world.pending_demand_factor
        for k, name in enumerate(self.chain):
            tp = float(cum_d[k, i + 1] - cum_d[k, lo]) / span
            arr = float(cum_a[k, i + 1] - cum_a[k, lo]) / span
            seen = observed_slots[k]
            busy = float(sum(seen))
            if self.scenario.world.attribution == "exact":
                split = {self.shape_names[si]: float(seen[si]) for si in range(S) if seen[si] > 0}
            else:
                split = attribute_slots(busy, self.need_map[k], self.shapes, counts) if busy > 0 else {}
            stages.append(
                StageObservation(
                    name=name,
                    backlog=Reading.of(q[k]),
                    throughput=Reading.of(tp),
                    arrival_rate=Reading.of(arr),
                    slots_busy=Reading.of(busy),
                    slots_by_shape=frozen_map(split),
                    upstream=self.chain[k - 1] if k > 0 else None,
                )
            )
            if unplaced[k] > 0 and factor > 0:
                n_bundles = min(unplaced[k], math.ceil(factor * max(1, placed_total[k])))
                demand.extend([self.need_map[k]] * n_bundles)
        nodes = self._nodes(now, busy_slots)
        return Snapshot(
            time=now,
            shapes=self.shapes,
            nodes=nodes,
            node_counts=MappingProxyType(counts),
            pending_counts=MappingProxyType(
                {self.shape_names[si]: len(self.ss[si].pending) for si in range(S)}
            ),
            stages=tuple(stages),
            pending_demand=tuple(demand),
        )

    def _nodes(self, now: float, busy_slots: list[list[float]]) -> tuple[Node, ...]:
        out: list[Node] = []
        tab = self.table
        ci, gi = self.cpu_index, self.gpu_index
        for si, shape in enumerate(self.shapes):
            ids = self.ss[si].live_ids()
            if len(ids) == 0:
                continue
            cpu_cap = self.cap[si][ci] if ci is not None else 0.0
            gpu_cap = self.cap[si][gi] if gi is not None else 0.0
            cpu_used = (
                sum(busy_slots[k][si] * self.need[k][ci] for k in range(self.K)) if ci is not None else 0.0
            )
            gpu_used = (
                sum(busy_slots[k][si] * self.need[k][gi] for k in range(self.K)) if gi is not None else 0.0
            )
            pos = np.arange(len(ids), dtype=np.float64)
            cpu = (
                np.clip(cpu_used - pos * cpu_cap, 0.0, cpu_cap) / cpu_cap * 100.0
                if cpu_cap > 0
                else np.zeros(len(ids))
            )
            gpu = np.clip(gpu_used - pos * gpu_cap, 0.0, gpu_cap) / gpu_cap * 100.0 if gpu_cap > 0 else None
            idle = now - tab.last_busy[ids]
            cpu_l = cpu.tolist()
            gpu_l = gpu.tolist() if gpu is not None else None
            idle_l = idle.tolist()
            name = shape.name
            for p, nid in enumerate(ids.tolist()):
                out.append(
                    Node(
                        node_id=f"{name}-{nid}",
                        shape=name,
                        cpu_utilization=Reading(cpu_l[p]),
                        gpu_utilization=Reading(gpu_l[p]) if gpu_l is not None else _NOT_GPU,
                        idle_seconds=idle_l[p] if idle_l[p] > _EPS else None,
                    )
                )
        return tuple(out)

    def _decide(self, snap: Snapshot, state: DecisionState) -> tuple[DecisionRecord, DecisionState]:
        current = snap.counts_including_pending()
        try:
            d = self.decide_fn(snap, self.config, self.models, self.policy, state)
        except Exception as e:  # a failing policy is held, as the daemon fails static
            rec = DecisionRecord(
                time=snap.time,
                current=MappingProxyType(current),
                target=MappingProxyType(dict(current)),
                proposed=MappingProxyType(dict(current)),
                held=True,
                demand=MappingProxyType({}),
                error=f"{type(e).__name__}: {e}",
            )
            return rec, state
        plan = d.plan
        target = plan.targets()
        proposed = {c.shape: (c.proposed if c.proposed is not None else c.target) for c in plan.changes}
        rec = DecisionRecord(
            time=snap.time,
            current=MappingProxyType(current),
            target=MappingProxyType(target),
            proposed=MappingProxyType(proposed),
            held=plan.held,
            demand=MappingProxyType({dm.stage: dm.target_rate for dm in plan.demands}),
        )
        return rec, d.state

    def _apply(self, target: Mapping[str, int], snap: Snapshot, now: float) -> None:
        current = snap.counts_including_pending()
        for si, name in enumerate(self.shape_names):
            delta = int(target.get(name, current[name])) - current[name]
            if delta > 0:
                self._launch(si, delta, now)
            elif delta < 0:
                self._remove(si, -delta, now)


def simulate(
    scenario: Scenario,
    policy: Policy,
    *,
    progress: Callable[[float, float], None] | None = None,
    models: ThroughputModels | None = None,
    decide_fn: DecideFn = decide,
) -> SimRun:
    """Run ``policy`` on ``scenario`` and return the raw run (see ``autoscaler.sim.results.summarize``)."""
    return Simulation(scenario, policy, models=models, progress=progress, decide_fn=decide_fn).run()
