"""What the daemon would observe of the simulated cluster: a ``Snapshot`` built the way the daemon builds
one — throughput and arrivals over the configured rate window, backlog and busy slots as gauges, busy slots
attributed to shapes as ``observe.attribute_slots`` does (or exactly), node utilization and idle times as
the GCS reports them, and the work that found no room as pending demand."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from autoscaler.core.observe import attribute_slots
from autoscaler.sim.cluster import Cluster
from autoscaler.sim.pipeline import PipelineModel
from autoscaler.sim.records import FloatArray
from autoscaler.sim.scenario import SimScenario
from autoscaler.types import Node, Reading, Snapshot, StageObservation, frozen_map

__all__ = ["Observer"]

_EPS = 1e-9
_NOT_GPU = Reading.unknown("node has no GPU")


class Observer:
    """Snapshots of one run's cluster and pipeline."""

    def __init__(
        self, scenario: SimScenario, cluster: Cluster, pipeline: PipelineModel, window_steps: int
    ) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.pipeline = pipeline
        self.window_steps = window_steps
        self.dt = scenario.step_seconds
        self.shapes = pipeline.shapes
        self.shape_names = tuple(s.name for s in pipeline.shapes)
        self.chain = pipeline.chain
        self.S, self.K = pipeline.S, pipeline.K

    def snapshot(
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
        """The snapshot at ``now``, the end of step ``i``: ``q`` the queues, ``observed_slots`` the busy slots
        the gauges show, ``busy_slots`` those of the last step, ``unplaced``/``placed_total`` the slots that
        found no room / were placed, ``cum_a``/``cum_d`` cumulative arrivals / completions per stage."""
        S, dt = self.S, self.dt
        pipe = self.pipeline
        lo = max(0, i + 1 - self.window_steps)
        span = (i + 1 - lo) * dt
        counts = {self.shape_names[si]: len(self.cluster.by_shape[si].live) for si in range(S)}
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
                split = attribute_slots(busy, pipe.need_map[k], self.shapes, counts) if busy > 0 else {}
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
                demand.extend([pipe.need_map[k]] * n_bundles)
        nodes = self.nodes(now, busy_slots)
        return Snapshot(
            time=now,
            shapes=self.shapes,
            nodes=nodes,
            node_counts=MappingProxyType(counts),
            pending_counts=MappingProxyType(
                {self.shape_names[si]: len(self.cluster.by_shape[si].pending) for si in range(S)}
            ),
            stages=tuple(stages),
            pending_demand=tuple(demand),
        )

    def nodes(self, now: float, busy_slots: list[list[float]]) -> tuple[Node, ...]:
        """The live nodes as the GCS and the metrics report them: the placed slots packed onto the first nodes
        of each shape, utilization from the slots' resources, idle time since each node last ran work."""
        out: list[Node] = []
        pipe = self.pipeline
        tab = self.cluster.table
        ci, gi = pipe.cpu_index, pipe.gpu_index
        for si, shape in enumerate(self.shapes):
            ids = self.cluster.by_shape[si].live_ids()
            if len(ids) == 0:
                continue
            cpu_cap = pipe.cap[si][ci] if ci is not None else 0.0
            gpu_cap = pipe.cap[si][gi] if gi is not None else 0.0
            cpu_used = (
                sum(busy_slots[k][si] * pipe.need[k][ci] for k in range(self.K)) if ci is not None else 0.0
            )
            gpu_used = (
                sum(busy_slots[k][si] * pipe.need[k][gi] for k in range(self.K)) if gi is not None else 0.0
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
