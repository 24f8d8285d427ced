"""What a simulation run records: every decision, every node, and the per-step state of the pipeline and the
cluster. ``autoscaler.sim.results`` turns a run into metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from autoscaler.sim.scenario import SimScenario
from autoscaler.types import NodeShape

__all__ = ["BoolArray", "FloatArray", "IntArray", "NodeLog", "SimDecision", "SimRun"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SimDecision:
    """One decision of a simulated run: what it saw and asked for. (The daemon's decision-log row is
    ``autoscaler.adapters.state_store.DecisionRecord``.)"""

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

    scenario: SimScenario
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
    decisions: tuple[SimDecision, ...]
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
