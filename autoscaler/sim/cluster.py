"""The simulated cluster's nodes: launches (with a launch delay drawn per shape), the warm pool sized by the
daemon's own ``pool_targets``, removals and drains, and the events that move nodes between those states."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from autoscaler.core.warm_pool import PoolMemory, pool_targets
from autoscaler.sim.records import IntArray, NodeLog
from autoscaler.sim.scenario import SimScenario

__all__ = ["Cluster", "NodeTable", "ShapeNodes"]

_EPS = 1e-9
_INF = math.inf


class NodeTable:
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
class ShapeNodes:
    """One shape's nodes by where they are in their life (ids index the NodeTable)."""

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


class Cluster:
    """Every node of one run, by shape; node ids are rows of ``table``."""

    def __init__(self, scenario: SimScenario, launch_rng: list[np.random.Generator]) -> None:
        self.config = scenario.config
        self.dt = scenario.step_seconds
        self.shape_names = tuple(s.name for s in scenario.config.shapes)
        self.launch_rng = launch_rng
        """One generator per shape: the k-th launch of a shape gets the same delay under every policy."""
        self.launch_mean = [scenario.launch_mean(n) for n in self.shape_names]
        self.launch_jitter = [scenario.world_shape(n).launch_jitter for n in self.shape_names]
        self.initial = [scenario.world_shape(n).initial for n in self.shape_names]
        self.standby = [scenario.world_shape(n).standby for n in self.shape_names]
        self.pool_memory = PoolMemory()
        self.drain_seconds = scenario.world.drain_seconds
        self.table = NodeTable()
        self.by_shape = [ShapeNodes() for _ in self.shape_names]
        self.ready_heap: list[tuple[float, int]] = []
        self.drain_heap: list[tuple[float, int]] = []

    def start(self) -> None:
        """The nodes running at time 0: each shape's initial nodes, then its standby ones."""
        tab = self.table
        for si in range(len(self.shape_names)):
            for _ in range(self.initial[si]):
                self.make_live(si, tab.add(si, 0.0, 0.0, in_pool=False))
            for _ in range(self.standby[si]):
                self.by_shape[si].pool.append(tab.add(si, 0.0, 0.0, in_pool=True))

    def billed(self) -> list[int]:
        """Nodes being paid for, per shape: pending, live, draining and warm-pool."""
        out = []
        for st in self.by_shape:
            n = len(st.live) + len(st.pending) + len(st.draining) + len(st.pool)
            n += len(st.pool_pending)
            out.append(n)
        return out

    def live_counts(self) -> list[int]:
        return [len(st.live) for st in self.by_shape]

    def launch_delay(self, si: int) -> float:
        mean, jitter = self.launch_mean[si], self.launch_jitter[si]
        u = float(self.launch_rng[si].uniform(-1.0, 1.0))
        return max(0.0, mean + jitter * u)

    def request(self, si: int, t: float, *, in_pool: bool) -> None:
        ready = t + self.launch_delay(si)
        nid = self.table.add(si, t, ready, in_pool=in_pool)
        (self.by_shape[si].pool_pending if in_pool else self.by_shape[si].pending).add(nid)
        heapq.heappush(self.ready_heap, (ready, nid))

    def launch(self, si: int, count: int, t: float) -> None:
        st = self.by_shape[si]
        for _ in range(count):
            if st.pool:
                nid = st.pool.pop(0)
                self.table.joined[nid] = t
                # Held by a placement group in the pool, it was not idle; its idle time starts now.
                self.table.last_busy[nid] = t
                self.make_live(si, nid)
                self.request(si, t, in_pool=True)
            else:
                self.request(si, t, in_pool=False)

    def size_pool(self, target: Mapping[str, int], t: float) -> None:
        """Top the warm pool up to, or trim it down to, what the daemon's sizing asks for."""
        cfg = self.config
        self.pool_memory.remember_plan(t, target, cfg.warm_pool.history_seconds)
        want = pool_targets(cfg, self.pool_memory, target).counts
        tab = self.table
        for si, name in enumerate(self.shape_names):
            st = self.by_shape[si]
            have = len(st.pool) + len(st.pool_pending)
            goal = int(want.get(name, 0))
            for _ in range(goal - have):
                self.request(si, t, in_pool=True)
            extra = have - goal
            for nid in sorted(st.pool_pending, reverse=True)[: max(0, extra)]:
                tab.removed[nid] = t
                st.pool_pending.discard(nid)
                extra -= 1
            while extra > 0 and st.pool:
                tab.removed[st.pool.pop()] = t
                extra -= 1

    def make_live(self, si: int, nid: int) -> None:
        st = self.by_shape[si]
        st.live.append(nid)
        st.dirty = True

    def events(self, t: float) -> None:
        tab = self.table
        while self.ready_heap and self.ready_heap[0][0] <= t + _EPS:
            _, nid = heapq.heappop(self.ready_heap)
            if tab.removed[nid] < _INF:
                continue  # cancelled while launching
            si = int(tab.shape[nid])
            st = self.by_shape[si]
            if nid in st.pool_pending:
                st.pool_pending.discard(nid)
                st.pool.append(nid)
            else:
                st.pending.discard(nid)
                self.make_live(si, nid)
        while self.drain_heap and self.drain_heap[0][0] <= t + _EPS:
            _, nid = heapq.heappop(self.drain_heap)
            tab.removed[nid] = t
            self.by_shape[int(tab.shape[nid])].draining.discard(nid)

    def next_event(self) -> float:
        a = self.ready_heap[0][0] if self.ready_heap else _INF
        b = self.drain_heap[0][0] if self.drain_heap else _INF
        return min(a, b)

    def remove(self, si: int, count: int, t: float) -> None:
        st = self.by_shape[si]
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

    def apply(self, target: Mapping[str, int], current: Mapping[str, int], now: float) -> None:
        """Launch or remove nodes so that each shape's running plus pending count becomes its target."""
        for si, name in enumerate(self.shape_names):
            delta = int(target.get(name, current[name])) - current[name]
            if delta > 0:
                self.launch(si, delta, now)
            elif delta < 0:
                self.remove(si, -delta, now)
